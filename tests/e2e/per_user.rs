//! Per-user OAuth (`oauth2_authorization_code`, `oauth2_dcr`) against a real
//! authorization server (`oidc-provider`): connect → callback → proxied call → expiry →
//! refresh → restart → disconnect → revoked; one refresh for many concurrent requests;
//! every bad callback; dynamic registration; removal revoking every user's tokens. The
//! provider quirks run against fixture token endpoints through the real plugins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_e2e::expiry::TokenExpiry;
use portcullis_e2e::fixture::{Canned, Fixture};
use portcullis_e2e::oidc::Oidc;
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::whois::Whois;
use portcullis_e2e::{
    Host, HostOptions, client, client_from, error_of, get_json, grant, registry_copy,
};
use serde_json::{Value, json};

pub(crate) const ALICE: &str = "127.0.0.2";
pub(crate) const BOB: &str = "127.0.0.3";

pub(crate) fn tailnet_config(socket: &std::path::Path, connectors: Value) -> String {
    json!({
        "identity": {"mode": "tailscale", "socket": socket, "cache_ttl_secs": 0},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": connectors},
        "grants": [
            grant("alice@example.com", &["notes/**", "wiki/**"], false),
            grant("bob@example.com", &["notes/**", "wiki/**"], false),
            {"src": ["alice@example.com"], "app": {"tailscale.com/cap/aperture": [{"read_metrics": true}]}},
        ],
    })
    .to_string()
}

/// A connector for the peer's client `client_id` (registered at runtime by [`client_for`]).
pub(crate) fn notes_connector(oidc: &Oidc, up: &Upstream, client_id: &str) -> Value {
    json!({
        "protocol": "http",
        "url": up.url(),
        "description": "Notes API",
        "auth": {
            "type": "oauth2_authorization_code",
            "client_id": client_id,
            "client_secret": "notes-secret-0123456789",
            "authorization_url": format!("{}/auth", oidc.issuer),
            "token_url": format!("{}/token", oidc.issuer),
            "revocation_url": format!("{}/token/revocation", oidc.issuer),
            "scopes": ["openid", "offline_access", "read:data"],
            "auth_params": {"prompt": "consent"},
        },
    })
}

/// Registers the confidential client the host's connector uses, with its callback URL.
pub(crate) async fn client_for(oidc: &Oidc, host: &Host, client_id: &str, id: &str) {
    oidc.add_client(json!({
        "client_id": client_id,
        "client_secret": "notes-secret-0123456789",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [host.url(&format!("/aperture/auth/{id}/callback"))],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "openid offline_access read:data",
    }))
    .await;
}

/// The authorization server, an echo upstream, Alice and Bob on the tailnet, and a host
/// with a `notes` connector for the peer's client `client_id`.
struct Notes {
    oidc: Oidc,
    up: Upstream,
    whois: Whois,
    config: String,
    host: Host,
}

async fn notes(access_ttl: u64, client_id: &str) -> Notes {
    let oidc = Oidc::start(access_ttl);
    let up = Upstream::start().await;
    let whois = users().await;
    let config = tailnet_config(
        &whois.socket,
        json!({"notes": notes_connector(&oidc, &up, client_id)}),
    );
    let host = Host::start(&config);
    client_for(&oidc, &host, client_id, "notes").await;
    Notes {
        oidc,
        up,
        whois,
        config,
        host,
    }
}

pub(crate) async fn users() -> Whois {
    let whois = Whois::start().await;
    whois.user(ALICE, "alice@example.com", &[], json!({}));
    whois.user(BOB, "bob@example.com", &[], json!({}));
    whois
}

pub(crate) async fn status(host: &Host, from: &str, id: &str) -> String {
    let v: Value = client_from(from)
        .get(host.url("/api/connectors"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    v["connectors"]
        .as_array()
        .expect("connectors")
        .iter()
        .find(|c| c["id"] == id)
        .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

pub(crate) async fn start_connect(host: &Host, from: &str, id: &str) -> String {
    let resp = client_from(from)
        .post(host.url(&format!("/api/connectors/{id}/connect")))
        .send()
        .await
        .expect("connect");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    v["auth_url"].as_str().expect("auth_url").to_owned()
}

/// Connect → the user's browser at the provider → callback, as `from`.
async fn connect_as(host: &Host, oidc: &Oidc, from: &str, account: &str, id: &str) {
    let auth_url = start_connect(host, from, id).await;
    let back = oidc.authorize(&auth_url, account).await;
    let resp = client_from(from).get(&back).send().await.expect("callback");
    let status = resp.status();
    let page = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected"), "{page}");
}

/// The bearer token the echo upstream received for `from`'s request.
async fn token_sent(host: &Host, from: &str, path: &str) -> String {
    let resp = client_from(from)
        .get(host.url(path))
        .send()
        .await
        .expect("proxy");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let v: Value = resp.json().await.expect("echo");
    v["headers"]["authorization"][0]
        .as_str()
        .expect("authorization injected")
        .strip_prefix("Bearer ")
        .expect("bearer")
        .to_owned()
}

pub(crate) fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn connect_call_refresh_restart_disconnect_against_a_real_authorization_server() {
    let Notes {
        oidc,
        up,
        whois: _whois,
        config,
        mut host,
    } = notes(4, "notes-app").await;

    assert_eq!(status(&host, ALICE, "notes").await, "Needs auth");
    let (code, err, msg) = error_of(
        client_from(ALICE)
            .get(host.url("/v1/connectors/notes/items"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!((code, err.as_str()), (401, "needs_auth"), "{msg}");
    assert!(msg.contains("/api/connectors/notes/connect"), "{msg}");
    assert_eq!(up.hits(), 0, "nothing reaches the upstream without a token");

    // The authorize URL: PKCE S256, state, scopes, auth_params, our callback.
    let auth_url = start_connect(&host, ALICE, "notes").await;
    assert_eq!(
        query_param(&auth_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&auth_url, "code_challenge").map(|c| c.len()),
        Some(43)
    );
    assert_eq!(query_param(&auth_url, "prompt").as_deref(), Some("consent"));
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("openid offline_access read:data")
    );
    assert_eq!(
        query_param(&auth_url, "redirect_uri"),
        Some(host.url("/aperture/auth/notes/callback"))
    );
    let back = oidc.authorize(&auth_url, "alice").await;
    let page = client_from(ALICE)
        .get(&back)
        .send()
        .await
        .expect("callback");
    assert_eq!(page.status(), 200);
    assert_eq!(status(&host, ALICE, "notes").await, "Ready");

    // Alice's calls carry Alice's token; Bob has none and gets none of hers.
    let alice_token = token_sent(&host, ALICE, "/v1/connectors/notes/items").await;
    assert_eq!(
        oidc.introspect(&alice_token).await,
        (true, Some("alice".into()))
    );
    assert_eq!(status(&host, BOB, "notes").await, "Needs auth");
    let resp = client_from(BOB)
        .get(host.url("/v1/connectors/notes/items"))
        .send()
        .await
        .expect("bob");
    assert_eq!(resp.status(), 401);
    connect_as(&host, &oidc, BOB, "bob", "notes").await;
    let bob_token = token_sent(&host, BOB, "/v1/connectors/notes/items").await;
    assert_ne!(bob_token, alice_token);
    assert_eq!(
        oidc.introspect(&bob_token).await,
        (true, Some("bob".into()))
    );
    assert_eq!(
        token_sent(&host, ALICE, "/v1/connectors/notes/items").await,
        alice_token,
        "Alice still gets her own token"
    );

    // Expiry: the token is refreshed (in the background or on use) and rotated.
    let refreshes = oidc.grants_of("refresh_token").await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let renewed = token_sent(&host, ALICE, "/v1/connectors/notes/items").await;
    assert_ne!(renewed, alice_token, "a new access token after expiry");
    assert_eq!(
        oidc.introspect(&renewed).await,
        (true, Some("alice".into()))
    );
    assert!(oidc.grants_of("refresh_token").await > refreshes);

    // A restart loses nothing: the tokens were sealed in the vault.
    let data = host.data_dir();
    let logs = host.stop();
    for secret in [&alice_token, &bob_token, &renewed] {
        assert!(!logs.contains(secret.as_str()), "a token was logged");
    }
    let raw = std::fs::read(data.join("portcullis.redb")).expect("vault file");
    assert!(
        !raw.windows(renewed.len()).any(|w| w == renewed.as_bytes()),
        "tokens are sealed at rest"
    );
    let host = Host::start_with(
        &config,
        HostOptions {
            data_dir: Some(data),
            ..HostOptions::default()
        },
    );
    assert_eq!(status(&host, ALICE, "notes").await, "Ready");
    let after_restart = token_sent(&host, ALICE, "/v1/connectors/notes/items").await;
    assert_eq!(
        oidc.introspect(&after_restart).await,
        (true, Some("alice".into()))
    );

    // Disconnect: deleted here, revoked at the provider; Bob is untouched.
    let resp = client_from(ALICE)
        .delete(host.url("/api/connectors/notes/connection"))
        .send()
        .await
        .expect("disconnect");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["disconnected"], true);
    assert_eq!(status(&host, ALICE, "notes").await, "Needs auth");
    assert!(
        !oidc.introspect(&after_restart).await.0,
        "revoked at the provider"
    );
    let resp = client_from(ALICE)
        .get(host.url("/v1/connectors/notes/items"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401);
    assert_eq!(status(&host, BOB, "notes").await, "Ready");
    assert!(oidc.route_hits().await["revocation"].as_u64().unwrap_or(0) >= 1);
    // Disconnecting again is harmless.
    let v: Value = client_from(ALICE)
        .delete(host.url("/api/connectors/notes/connection"))
        .send()
        .await
        .expect("again")
        .json()
        .await
        .expect("json");
    assert_eq!(v["disconnected"], false);
}

#[tokio::test]
async fn a_hundred_requests_at_expiry_cause_exactly_one_refresh() {
    let Notes {
        oidc,
        up: _up,
        whois: _whois,
        host,
        ..
    } = notes(6, "notes-burst").await;
    let host = Arc::new(host);
    connect_as(&host, &oidc, ALICE, "alice", "notes").await;
    let connected = Instant::now();
    let first = token_sent(&host, ALICE, "/v1/connectors/notes/items").await;
    oidc.reset().await;
    // The token is due 4.8 s after it was issued (a fifth of its life early).
    tokio::time::sleep(Duration::from_millis(4_850).saturating_sub(connected.elapsed())).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            token_sent(&host, ALICE, "/v1/connectors/notes/items").await
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.insert(t.await.expect("task"));
    }
    assert_eq!(
        oidc.grants_of("refresh_token").await,
        1,
        "one refresh for everyone"
    );
    assert!(!seen.contains(&first) || seen.len() <= 2);
    let now = token_sent(&host, ALICE, "/v1/connectors/notes/items").await;
    assert_ne!(now, first);
    assert!(oidc.introspect(&now).await.0);
    let metrics = portcullis_e2e::metrics_from(&host, ALICE).await;
    for line in [
        "portcullis_user_token_requests_total{kind=\"code\",outcome=\"ok\"} 1",
        "portcullis_user_token_requests_total{kind=\"refresh\",outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn bad_callbacks_are_refused_with_a_page_that_says_what_to_do() {
    let Notes {
        oidc,
        up: _up,
        whois: _whois,
        host,
        ..
    } = notes(3600, "notes-cb").await;
    // The callback's status and HTML page, as `from`.
    let page = |from: &'static str, url: String| async move {
        let resp = client_from(from).get(&url).send().await.expect("callback");
        let s = resp.status().as_u16();
        let ct = resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("text/html"), "{ct}");
        (s, resp.text().await.unwrap_or_default())
    };
    let callback = |query: String| host.url(&format!("/aperture/auth/notes/callback?{query}"));

    // Unknown state.
    let (s, text) = page(ALICE, callback("code=x&state=forged".into())).await;
    assert_eq!(s, 400);
    assert!(text.contains("unknown or was already used"), "{text}");

    // The wrong caller: Bob cannot finish Alice's authorization (and does not burn it).
    let auth_url = start_connect(&host, ALICE, "notes").await;
    let back = oidc.authorize(&auth_url, "alice").await;
    let (s, text) = page(BOB, back.clone()).await;
    assert_eq!(s, 403);
    assert!(text.contains("another user"), "{text}");
    assert_eq!(status(&host, BOB, "notes").await, "Needs auth");
    // The wrong connector in the path.
    let wrong = back.replace("/auth/notes/", "/auth/wiki/");
    let (s, _) = page(ALICE, wrong.clone()).await;
    assert_eq!(s, 400);
    // Alice finishes; a replay of the same callback is refused.
    let (s, text) = page(ALICE, back.clone()).await;
    assert_eq!(s, 200, "{text}");
    let (s, text) = page(ALICE, back.clone()).await;
    assert_eq!(s, 400);
    assert!(text.contains("already used"), "{text}");
    assert_eq!(status(&host, ALICE, "notes").await, "Ready");

    // The provider reports an error (the user denied consent).
    let auth_url = start_connect(&host, BOB, "notes").await;
    let state = query_param(&auth_url, "state").expect("state");
    let (s, text) = page(
        BOB,
        callback(format!(
            "error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state={state}"
        )),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        text.contains("access_denied") && text.contains("&lt;b&gt;no"),
        "{text}"
    );
    // A code the provider does not know: the exchange fails, nothing is stored.
    let auth_url = start_connect(&host, BOB, "notes").await;
    let state = query_param(&auth_url, "state").expect("state");
    let (s, text) = page(BOB, callback(format!("code=bogus&state={state}"))).await;
    assert_eq!(s, 502);
    assert!(text.contains("invalid_grant"), "{text}");
    assert_eq!(status(&host, BOB, "notes").await, "Needs auth");

    // Connect needs a grant, a known connector, and a per-user one.
    let resp = client_from(ALICE)
        .post(host.url("/api/connectors/nope/connect"))
        .send()
        .await
        .expect("connect");
    assert_eq!(resp.status(), 404);
    // 127.0.0.1 is "(loopback)" here, which holds no grant on the connector.
    let resp = client()
        .post(host.url("/api/connectors/notes/connect"))
        .send()
        .await
        .expect("connect");
    assert_eq!(resp.status(), 403, "no grant, no connection");
}

#[tokio::test]
async fn dynamic_registration_registers_once_then_each_user_connects() {
    let oidc = Oidc::start(3600);
    let whois = users().await;
    // The resource server names its authorization server (RFC 9728).
    let api = Fixture::start().await;
    let resource = format!("{}/v1", api.url());
    api.json(
        "/.well-known/oauth-protected-resource",
        200,
        json!({"resource": resource, "authorization_servers": [oidc.issuer]}),
    );
    api.json("/v1/whoami", 200, json!({"ok": true}));
    let host = Host::start(&tailnet_config(
        &whois.socket,
        json!({"wiki": {"protocol": "http", "url": format!("{}/v1", api.url()),
            "auth": {"type": "oauth2_dcr", "scopes": ["openid", "offline_access", "read:data"]}}}),
    ));
    assert_eq!(status(&host, ALICE, "wiki").await, "Needs auth");
    connect_as(&host, &oidc, ALICE, "alice", "wiki").await;
    connect_as(&host, &oidc, BOB, "bob", "wiki").await;
    assert_eq!(
        oidc.route_hits().await["registration"].as_u64(),
        Some(1),
        "one registration per connector"
    );
    for (from, who) in [(ALICE, "alice"), (BOB, "bob")] {
        let resp = client_from(from)
            .get(host.url("/v1/connectors/wiki/whoami"))
            .send()
            .await
            .expect("call");
        assert_eq!(resp.status(), 200);
        let seen = api.seen_at("/v1/whoami");
        let token = seen.last().expect("seen").headers["authorization"]
            .strip_prefix("Bearer ")
            .expect("bearer")
            .to_owned();
        assert_eq!(oidc.introspect(&token).await, (true, Some(who.into())));
    }
    // The authorize URL carries the resource indicator from the metadata.
    let auth_url = start_connect(&host, ALICE, "wiki").await;
    assert_eq!(
        query_param(&auth_url, "resource").as_deref(),
        Some(resource.as_str())
    );
    assert_eq!(oidc.route_hits().await["registration"].as_u64(), Some(1));
    // No scope was asked for that the connector did not name.
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("openid offline_access read:data")
    );

    // Step-up (RFC 6750 §3.1): a 403 for want of scope reaches the caller as it is, and
    // that user's next authorization asks for the scope too; another user's does not.
    api.on(
        "/v1/admin",
        vec![
            Canned::json(403, json!({"error": "insufficient_scope"})).header(
                "www-authenticate",
                r#"Bearer error="insufficient_scope", scope="read:data write:data""#,
            ),
        ],
    );
    let resp = client_from(ALICE)
        .post(host.url("/v1/connectors/wiki/admin"))
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 403);
    let listed = |from: &'static str| {
        let host = &host;
        async move {
            let v: Value = client_from(from)
                .get(host.url("/api/connectors"))
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("json");
            v["connectors"][0]["step_up"].clone()
        }
    };
    assert_eq!(
        listed(ALICE).await,
        json!({"scopes": ["read:data", "write:data"]}),
        "the connector list says a new connect is due, and for what"
    );
    assert_eq!(listed(BOB).await, Value::Null);
    let wider = start_connect(&host, ALICE, "wiki").await;
    assert_eq!(
        query_param(&wider, "scope").as_deref(),
        Some("openid offline_access read:data write:data")
    );
    let bobs = start_connect(&host, BOB, "wiki").await;
    assert_eq!(
        query_param(&bobs, "scope").as_deref(),
        Some("openid offline_access read:data")
    );
    // Authorizing the wider scope ends the step-up: the next connect is as before.
    connect_as(&host, &oidc, ALICE, "alice", "wiki").await;
    assert_eq!(listed(ALICE).await, Value::Null);
    let after = start_connect(&host, ALICE, "wiki").await;
    assert_eq!(
        query_param(&after, "scope").as_deref(),
        Some("openid offline_access read:data")
    );

    // A connect under a forged host name is refused before anything else (the browser
    // defence); under another of the host's own names too, because a dynamically
    // registered client would accept any redirect URI and the code would go there: only
    // public_url or the bound address may build it.
    let port = host.addr.port();
    let connect_as_host = |name: String| {
        client_from(ALICE)
            .post(host.url("/api/connectors/wiki/connect"))
            .header("host", name)
            .send()
    };
    let resp = connect_as_host(format!("evil.example:{port}"))
        .await
        .expect("connect");
    let (s, code, msg) = error_of(resp).await;
    assert_eq!((s, code.as_str()), (421, "unknown_host"), "{msg}");
    let resp = connect_as_host(format!("localhost:{port}"))
        .await
        .expect("connect");
    let (s, code, msg) = error_of(resp).await;
    assert_eq!((s, code.as_str()), (400, "public_url_required"), "{msg}");
    assert_eq!(oidc.route_hits().await["registration"].as_u64(), Some(1));
    // Bob's token is rejected once: it is refreshed with the registered client and the
    // request sent again.
    api.on(
        "/v1/whoami",
        vec![
            Canned::json(401, json!({"error": "invalid_token"})),
            Canned::json(200, json!({"ok": true})),
        ],
    );
    let refreshes = oidc.grants_of("refresh_token").await;
    let resp = client_from(BOB)
        .get(host.url("/v1/connectors/wiki/whoami"))
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 200);
    assert_eq!(oidc.grants_of("refresh_token").await, refreshes + 1);
    let seen = api.seen_at("/v1/whoami");
    let token = seen.last().expect("seen").headers["authorization"]
        .strip_prefix("Bearer ")
        .expect("bearer")
        .to_owned();
    assert_eq!(oidc.introspect(&token).await, (true, Some("bob".into())));
}

#[tokio::test]
async fn removing_a_connector_revokes_every_users_tokens() {
    let Notes {
        oidc,
        up: _up,
        whois,
        host,
        ..
    } = notes(3600, "notes-rm").await;
    connect_as(&host, &oidc, ALICE, "alice", "notes").await;
    connect_as(&host, &oidc, BOB, "bob", "notes").await;
    let a = token_sent(&host, ALICE, "/v1/connectors/notes/x").await;
    let b = token_sent(&host, BOB, "/v1/connectors/notes/x").await;
    host.write_config(&tailnet_config(&whois.socket, json!({})));
    host.wait_for_log("revoking every user's tokens").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (oidc.introspect(&a).await.0 || oidc.introspect(&b).await.0) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!oidc.introspect(&a).await.0, "Alice's tokens revoked");
    assert!(!oidc.introspect(&b).await.0, "Bob's tokens revoked");
}

/// A per-user connector of `provider` whose OAuth endpoints are the fixture's.
pub(crate) fn fixture_connector(provider: &str, fx: &Fixture, scopes: &[&str]) -> Value {
    json!({
        "protocol": "http",
        "url": fx.url(),
        "provider": provider,
        "auth": {
            "type": "oauth2_authorization_code",
            "client_id": format!("{provider}-client"),
            "client_secret": "fixture-secret",
            "authorization_url": format!("{}/authorize", fx.url()),
            "token_url": format!("{}/token", fx.url()),
            "scopes": scopes,
        },
    })
}

pub(crate) fn fixture_host(reg: &std::path::Path, connectors: Value) -> Host {
    Host::start_with(
        &crate::loopback_config(connectors, crate::admin_everything()),
        HostOptions {
            env: vec![("PORTCULLIS_REGISTRY".into(), reg.display().to_string())],
            ..HostOptions::default()
        },
    )
}

/// Connects `(loopback)` through a fixture token endpoint: the code is whatever the
/// fixture accepts. Returns the callback's status and page.
pub(crate) async fn fixture_connect(host: &Host, id: &str) -> (u16, String) {
    let auth_url = start_connect(host, "127.0.0.1", id).await;
    let state = query_param(&auth_url, "state").expect("state");
    let resp = client()
        .get(host.url(&format!(
            "/aperture/auth/{id}/callback?code=fixture-code&state={state}"
        )))
        .send()
        .await
        .expect("callback");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

pub(crate) fn form(body: &str) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn invalid_grant_means_needs_auth_and_transient_failures_keep_the_tokens() {
    let reg = registry_copy::<&str>(&[]);
    let fx = Fixture::start().await;
    fx.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600, "token_type": "Bearer"})),
            Canned::json(503, json!({"error": "temporarily_unavailable"})),
            Canned::json(400, json!({"error": "invalid_grant", "error_description": "refresh token revoked"})),
        ],
    );
    fx.json("/api/me", 401, json!({"error": "expired"}));
    let mut c = fixture_connector("Custom", &fx, &["read"]);
    c.as_object_mut().expect("obj").remove("provider");
    let host = fixture_host(reg.path(), json!({"crm": c}));
    assert_eq!(fixture_connect(&host, "crm").await.0, 200);
    let exchange = form(&fx.seen_at("/token")[0].body);
    assert_eq!(exchange["grant_type"], "authorization_code");
    assert_eq!(exchange["code"], "fixture-code");
    assert_eq!(
        exchange["code_verifier"].len(),
        43,
        "the PKCE verifier is sent"
    );
    assert!(fx.seen_at("/token")[0].headers["authorization"].starts_with("Basic "));

    // 401 → refresh fails transiently (503) → the tokens are kept, the upstream's 401
    // relayed, and no second attempt is made with the same token.
    let resp = client()
        .get(host.url("/v1/connectors/crm/api/me"))
        .send()
        .await
        .expect("me");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("upstream body");
    assert_eq!(body["error"], "expired", "the upstream's own answer");
    assert_eq!(status(&host, "127.0.0.1", "crm").await, "Ready");
    assert_eq!(fx.seen_at("/api/me").len(), 1);
    assert_eq!(form(&fx.seen_at("/token")[1].body)["refresh_token"], "rt-1");
    host.wait_for_log("token refresh failed; keeping the tokens")
        .await;
    // Within the back-off nothing hammers the token endpoint.
    client()
        .get(host.url("/v1/connectors/crm/api/me"))
        .send()
        .await
        .expect("me");
    assert_eq!(fx.seen_at("/token").len(), 2);

    // invalid_grant on the next refresh (after the back-off) → Needs auth.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let resp = client()
        .get(host.url("/v1/connectors/crm/api/me"))
        .send()
        .await
        .expect("me");
    let (s, code, msg) = error_of(resp).await;
    assert_eq!((s, code.as_str()), (401, "needs_auth"), "{msg}");
    assert_eq!(status(&host, "127.0.0.1", "crm").await, "Needs auth");
    assert!(!host.logs().contains("rt-1") && !host.logs().contains("at-1"));
}

#[tokio::test]
async fn salesforce_instance_url_and_atlassian_rotation_and_cloud_id_per_user() {
    let reg = registry_copy(&["salesforce", "atlassian"]);
    let sf = Fixture::start().await;
    // No expires_in (Salesforce never sends one); instance_url on code and on refresh.
    sf.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "00D!sf-1", "refresh_token": "5Aep-sf", "instance_url": format!("{}/org1", sf.url()), "id": "https://login.salesforce.com/id/00D/005", "token_type": "Bearer", "issued_at": "1700000000000", "signature": "x"})),
            Canned::json(200, json!({"access_token": "00D!sf-2", "instance_url": format!("{}/org2", sf.url()), "id": "https://login.salesforce.com/id/00D/005", "token_type": "Bearer", "issued_at": "1700000000001", "signature": "y"})),
        ],
    );
    sf.on(
        "/org1/services/data/v63.0/limits",
        vec![
            Canned::json(401, json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])),
            Canned::json(200, json!({"org": 1})),
        ],
    );
    sf.json("/org2/services/data/v63.0/limits", 200, json!({"org": 2}));

    let atl = Fixture::start().await;
    atl.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "atl-1", "refresh_token": "atl-r1", "expires_in": 3600, "scope": "read:jira-work offline_access"})),
            Canned::json(200, json!({"access_token": "atl-2", "refresh_token": "atl-r2", "expires_in": 3600})),
            Canned::json(200, json!({"access_token": "atl-3", "refresh_token": "atl-r3", "expires_in": 3600})),
        ],
    );
    atl.json(
        "/oauth/token/accessible-resources",
        200,
        json!([{"id": "cafe-0001", "name": "Acme", "url": "https://acme.atlassian.net", "scopes": ["read:jira-work"], "avatarUrl": "https://example.invalid/a.png"}]),
    );
    atl.on(
        "/ex/jira/cafe-0001/rest/api/3/myself",
        vec![
            Canned::json(200, json!({"displayName": "Mia"})),
            Canned::json(401, json!({"code": 401, "message": "Unauthorized"})),
            Canned::json(200, json!({"displayName": "Mia"})),
            Canned::json(401, json!({"code": 401, "message": "Unauthorized"})),
            Canned::json(200, json!({"displayName": "Mia"})),
        ],
    );
    let mut atl_conn = fixture_connector("atlassian", &atl, &["read:jira-work", "offline_access"]);
    atl_conn["auth"]["auth_params"] = json!({"audience": "api.atlassian.com", "prompt": "consent"});
    let host = fixture_host(
        reg.path(),
        json!({
            "sf": fixture_connector("salesforce", &sf, &["api", "refresh_token"]),
            "jira": atl_conn,
        }),
    );

    // Salesforce: instance_url from the token response; a 401 refreshes and retries;
    // the refreshed instance_url is used from then on, the old refresh token kept.
    assert_eq!(fixture_connect(&host, "sf").await.0, 200);
    let v = get_json(&host.url("/v1/connectors/sf/limits")).await;
    assert_eq!(v["org"], 1);
    assert_eq!(
        sf.seen_at("/org1/services/data/v63.0/limits")[1].headers["authorization"],
        "Bearer 00D!sf-2"
    );
    let v = get_json(&host.url("/v1/connectors/sf/limits")).await;
    assert_eq!(v["org"], 2, "instance_url re-read on refresh");
    assert_eq!(
        status(&host, "127.0.0.1", "sf").await,
        "Ready",
        "the refresh token was kept"
    );

    // Atlassian: auth_params on the authorize URL; cloud id discovered with the user's
    // token; each refresh uses the refresh token the previous one returned.
    let auth_url = start_connect(&host, "127.0.0.1", "jira").await;
    assert_eq!(
        query_param(&auth_url, "audience").as_deref(),
        Some("api.atlassian.com")
    );
    assert_eq!(fixture_connect(&host, "jira").await.0, 200);
    for _ in 0..3 {
        let v = get_json(&host.url("/v1/connectors/jira/jira/rest/api/3/myself")).await;
        assert_eq!(v["displayName"], "Mia");
    }
    let discovery = atl.seen_at("/oauth/token/accessible-resources");
    assert_eq!(discovery[0].headers["authorization"], "Bearer atl-1");
    let refreshes: Vec<String> = atl.seen_at("/token")[1..]
        .iter()
        .map(|s| form(&s.body)["refresh_token"].clone())
        .collect();
    assert_eq!(
        refreshes,
        ["atl-r1", "atl-r2"],
        "the rotated refresh token is used next"
    );
}

#[tokio::test]
async fn slack_bot_and_user_tokens_ok_false_and_a_google_connection_shared_by_two_connectors() {
    let reg = registry_copy(&["slack", "google"]);
    let slack = Fixture::start().await;
    slack.on(
        "/token",
        vec![
            Canned::json(200, json!({"ok": false, "error": "invalid_code"})),
            Canned::json(200, json!({"ok": true, "access_token": "xoxb-bot", "token_type": "bot", "scope": "channels:read",
                "team": {"id": "T1", "name": "Acme"},
                "authed_user": {"id": "U1", "scope": "search:read", "access_token": "xoxp-user", "token_type": "user"}})),
        ],
    );
    slack.json(
        "/conversations.list",
        200,
        json!({"ok": true, "channels": []}),
    );
    let host_reg = reg.path();

    let google = Fixture::start().await;
    google.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "ya29.one", "refresh_token": "1//keep", "expires_in": 3599, "scope": "https://www.googleapis.com/auth/gmail.readonly https://www.googleapis.com/auth/drive.readonly", "token_type": "Bearer"})),
            // Google's refresh answers carry no refresh token: the old one is kept.
            Canned::json(200, json!({"access_token": "ya29.two", "expires_in": 3599, "token_type": "Bearer"})),
            Canned::json(200, json!({"access_token": "ya29.three", "expires_in": 3599, "token_type": "Bearer"})),
        ],
    );
    google.on(
        "/gmail/v1/users/me/profile",
        vec![
            Canned::json(
                401,
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
            ),
            Canned::json(200, json!({"emailAddress": "mia@example.com"})),
        ],
    );
    google.on(
        "/drive/v3/about",
        vec![
            Canned::json(
                401,
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
            ),
            Canned::json(200, json!({"user": {"displayName": "Mia"}})),
        ],
    );
    let mut gmail = fixture_connector(
        "google",
        &google,
        &["https://www.googleapis.com/auth/gmail.readonly"],
    );
    gmail["auth"]["client_id"] = json!("google-shared");
    let mut drive = fixture_connector(
        "google",
        &google,
        &["https://www.googleapis.com/auth/drive.readonly"],
    );
    drive["auth"]["client_id"] = json!("google-shared");
    let host = fixture_host(
        host_reg,
        json!({
            "slack": fixture_connector("slack", &slack, &["channels:read", "user:search:read"]),
            "gmail": gmail,
            "drive": drive,
        }),
    );

    // Slack: no PKCE; app and user scopes in their own parameters, comma-separated.
    let auth_url = start_connect(&host, "127.0.0.1", "slack").await;
    assert_eq!(query_param(&auth_url, "code_challenge"), None);
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("channels:read")
    );
    assert_eq!(
        query_param(&auth_url, "user_scope").as_deref(),
        Some("search:read")
    );
    // ok:false inside a 200 is a failed exchange.
    let (s, page) = fixture_connect(&host, "slack").await;
    assert_eq!(s, 502, "{page}");
    assert!(page.contains("invalid_code"), "{page}");
    assert_eq!(status(&host, "127.0.0.1", "slack").await, "Needs auth");
    assert_eq!(fixture_connect(&host, "slack").await.0, 200);
    client()
        .get(host.url("/v1/connectors/slack/conversations.list"))
        .send()
        .await
        .expect("bot");
    client()
        .get(host.url("/v1/connectors/slack/conversations.list"))
        .header("x-slack-token", "user")
        .send()
        .await
        .expect("user");
    let seen = slack.seen_at("/conversations.list");
    assert_eq!(seen[0].headers["authorization"], "Bearer xoxb-bot");
    assert_eq!(seen[1].headers["authorization"], "Bearer xoxp-user");
    assert!(!seen[1].headers.contains_key("x-slack-token"));

    // Google: one connection for Gmail and Drive; the authorization asks for both scopes.
    assert_eq!(status(&host, "127.0.0.1", "drive").await, "Needs auth");
    let auth_url = start_connect(&host, "127.0.0.1", "gmail").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some(
            "https://www.googleapis.com/auth/gmail.readonly https://www.googleapis.com/auth/drive.readonly"
        )
    );
    assert_eq!(fixture_connect(&host, "gmail").await.0, 200);
    assert_eq!(
        status(&host, "127.0.0.1", "drive").await,
        "Ready",
        "shared connection"
    );
    let v = get_json(&host.url("/v1/connectors/gmail/gmail/v1/users/me/profile")).await;
    assert_eq!(v["emailAddress"], "mia@example.com");
    let v = get_json(&host.url("/v1/connectors/drive/drive/v3/about")).await;
    assert_eq!(v["user"]["displayName"], "Mia");
    let refreshes: Vec<String> = google.seen_at("/token")[1..]
        .iter()
        .map(|s| form(&s.body)["refresh_token"].clone())
        .collect();
    assert_eq!(
        refreshes,
        ["1//keep", "1//keep"],
        "the kept refresh token is reused"
    );
    assert_eq!(
        google.seen_at("/drive/v3/about")[1].headers["authorization"],
        "Bearer ya29.three"
    );
}

#[tokio::test]
async fn no_refresh_token_is_misconfigured_and_a_failing_refresh_of_an_expired_token_says_when_to_retry()
 {
    let reg = registry_copy::<&str>(&[]);
    let offline = Fixture::start().await;
    offline.json(
        "/token",
        200,
        json!({"access_token": "short-lived", "expires_in": 1, "token_type": "Bearer"}),
    );
    let flaky = Fixture::start().await;
    flaky.on(
        "/token",
        vec![
            Canned::json(
                200,
                json!({"access_token": "at-x", "refresh_token": "rt-x", "expires_in": 1}),
            ),
            Canned::json(500, json!({"error": "server_error"})),
        ],
    );
    let custom = |fx: &Fixture| {
        let mut c = fixture_connector("Custom", fx, &["read"]);
        c.as_object_mut().expect("obj").remove("provider");
        c
    };
    let host = fixture_host(
        reg.path(),
        json!({"offline": custom(&offline), "flaky": custom(&flaky)}),
    );

    let (s, page) = fixture_connect(&host, "offline").await;
    assert_eq!(s, 200);
    assert!(page.contains("without offline access"), "{page}");
    assert_eq!(status(&host, "127.0.0.1", "offline").await, "Misconfigured");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (s, code, msg) = error_of(
        client()
            .get(host.url("/v1/connectors/offline/x"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!((s, code.as_str()), (401, "needs_auth"));
    assert!(msg.contains("offline access"), "{msg}");
    // An upstream 401 for a token that cannot be refreshed ends the connection.
    offline.json("/x", 401, json!({"error": "revoked"}));
    assert_eq!(fixture_connect(&host, "offline").await.0, 200);
    let resp = client()
        .get(host.url("/v1/connectors/offline/x"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401, "the upstream's answer is relayed");
    assert_eq!(status(&host, "127.0.0.1", "offline").await, "Needs auth");

    assert_eq!(fixture_connect(&host, "flaky").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let resp = client()
        .get(host.url("/v1/connectors/flaky/x"))
        .send()
        .await
        .expect("req");
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (s, code, _) = error_of(resp).await;
    assert_eq!((s, code.as_str()), (503, "token_refresh_failed"));
    assert!(retry.is_some_and(|r| (1..=300).contains(&r)), "{retry:?}");
    assert_eq!(
        status(&host, "127.0.0.1", "flaky").await,
        "Ready",
        "tokens kept"
    );
    assert!(
        flaky.seen_at("/x").is_empty(),
        "nothing sent with an expired token"
    );
}

/// The text of a tool result.
fn result_text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

/// Waits up to 10 s for a `notifications/tools/list_changed`; `what` says which.
async fn heard(n: &tokio::sync::Notify, what: &str) {
    if tokio::time::timeout(Duration::from_secs(10), n.notified())
        .await
        .is_err()
    {
        panic!("no notifications/tools/list_changed within 10 s: {what}");
    }
}

/// Forgets a notification that arrived before the step under test.
fn drain(n: &tokio::sync::Notify) {
    use futures_util::FutureExt as _;
    let _ = n.notified().now_or_never();
}

fn tool_names(tools: &[rmcp::model::Tool]) -> Vec<String> {
    tools.iter().map(|t| t.name.to_string()).collect()
}

fn echo(text: &str) -> rmcp::model::CallToolRequestParams {
    let Value::Object(args) = json!({"text": text}) else {
        unreachable!()
    };
    rmcp::model::CallToolRequestParams::new("wiki_echo").with_arguments(args)
}

#[tokio::test]
async fn per_user_mcp_connectors_use_each_users_own_session_and_token() {
    use portcullis_e2e::mcp_agent_from;
    use portcullis_e2e::mcp_server::McpServer;
    // The upstream is a resource server: it accepts only tokens the authorization server
    // says are active, and `echo` names whose token it was.
    let oidc = Oidc::start(4);
    let up = McpServer::start(oidc.introspection()).await;
    let whois = users().await;
    let mut wiki = notes_connector(&oidc, &Upstream::start().await, "wiki-app");
    wiki["protocol"] = json!("mcp");
    wiki["url"] = json!(up.url());
    // Catalogs are never re-read for age in this test (ten minutes), so each
    // notification below comes from the event under test.
    let mut config: Value =
        serde_json::from_str(&tailnet_config(&whois.socket, json!({"wiki": wiki})))
            .expect("config");
    config["mcp"] = json!({"poll_interval_secs": 600});
    let host = Host::start(&config.to_string());
    client_for(&oidc, &host, "wiki-app", "wiki").await;
    let mcp = host.url("/v1/mcp");

    // Not connected: the connector's tools are not listed, and a call says what to do.
    let alice = mcp_agent_from(&mcp, ALICE).await;
    let listed = tool_names(&alice.list_all_tools().await.expect("list"));
    assert!(!listed.iter().any(|t| t.starts_with("wiki_")), "{listed:?}");
    // A client without URL-mode elicitation is told where to authorize, as a tool error.
    let told = alice.call_tool(echo("hi")).await.expect("a tool result");
    assert_eq!(told.is_error, Some(true));
    let text = result_text(&told);
    assert!(
        text.contains("needs your authorization: open ") && text.contains(&oidc.issuer),
        "{text}"
    );
    assert_eq!(
        up.rejected(),
        0,
        "nothing reached the upstream without a token"
    );

    // Connected: the catalog loads at once and Alice's open session is told, before she
    // lists again; calls carry her token.
    let alice_changed = alice.service().tools_changed.clone();
    drain(&alice_changed);
    connect_as(&host, &oidc, ALICE, "alice", "wiki").await;
    heard(
        &alice_changed,
        "connecting sends notifications/tools/list_changed to Alice's session",
    )
    .await;
    let listed = tool_names(&alice.list_all_tools().await.expect("list"));
    assert!(listed.contains(&"wiki_echo".to_owned()), "{listed:?}");
    let r = alice.call_tool(echo("hi")).await.expect("alice calls");
    assert_eq!(result_text(&r), "echo: hi (for alice)");

    // Bob sees none of it until he connects; then his calls carry his own token.
    let bob = mcp_agent_from(&mcp, BOB).await;
    let listed = tool_names(&bob.list_all_tools().await.expect("list"));
    assert!(!listed.iter().any(|t| t.starts_with("wiki_")), "{listed:?}");
    connect_as(&host, &oidc, BOB, "bob", "wiki").await;
    let r = bob.call_tool(echo("yo")).await.expect("bob calls");
    assert_eq!(result_text(&r), "echo: yo (for bob)");
    let r = alice.call_tool(echo("again")).await.expect("alice again");
    assert_eq!(result_text(&r), "echo: again (for alice)");

    // The upstream's own list_changed on Alice's session reloads her catalog and reaches
    // her open session, before she lists again.
    drain(&alice_changed);
    let Value::Object(args) = json!({"name": "fresh"}) else {
        unreachable!()
    };
    let add = rmcp::model::CallToolRequestParams::new("wiki_add_tool").with_arguments(args);
    assert_eq!(
        result_text(&alice.call_tool(add).await.expect("add")),
        "added"
    );
    heard(
        &alice_changed,
        "an upstream list_changed on a per-user session reaches the client",
    )
    .await;
    let listed = tool_names(&alice.list_all_tools().await.expect("list"));
    assert!(listed.contains(&"wiki_fresh".to_owned()), "{listed:?}");

    // Expiry: the upstream refuses the old token; the session carries a refreshed one.
    let refreshes = oidc.grants_of("refresh_token").await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let r = alice.call_tool(echo("later")).await.expect("after expiry");
    assert_eq!(result_text(&r), "echo: later (for alice)");
    assert!(oidc.grants_of("refresh_token").await > refreshes);

    // Disconnect: Alice is told, her tools go from her list, her calls are refused; Bob
    // keeps his.
    drain(&alice_changed);
    let resp = client_from(ALICE)
        .delete(host.url("/api/connectors/wiki/connection"))
        .send()
        .await
        .expect("disconnect");
    assert_eq!(resp.status(), 200);
    heard(
        &alice_changed,
        "disconnecting sends notifications/tools/list_changed",
    )
    .await;
    let listed = tool_names(&alice.list_all_tools().await.expect("list"));
    assert!(!listed.iter().any(|t| t.starts_with("wiki_")), "{listed:?}");
    let told = alice.call_tool(echo("gone")).await.expect("a tool result");
    assert_eq!(told.is_error, Some(true));
    assert!(
        result_text(&told).contains("needs your authorization"),
        "{}",
        result_text(&told)
    );
    let r = bob.call_tool(echo("still")).await.expect("bob unaffected");
    assert_eq!(result_text(&r), "echo: still (for bob)");
    alice.cancel().await.expect("close");
    bob.cancel().await.expect("close");
}

/// An agent whose user consents when asked: it takes URL-mode elicitation, and each URL
/// it is asked to open is opened in the user's "browser" (the provider's login as
/// `account`, then the redirect back to the host) a moment after it accepts, as a
/// person would.
#[derive(Clone)]
struct Consenting {
    oidc: Arc<Oidc>,
    from: &'static str,
    account: &'static str,
    asked: Arc<std::sync::Mutex<Vec<String>>>,
    /// The log messages the gateway passed on.
    logs: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl rmcp::ClientHandler for Consenting {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        use rmcp::model::{ClientCapabilities, ElicitationCapability, UrlElicitationCapability};
        rmcp::model::ClientConfig::new(
            ClientCapabilities::builder()
                .enable_elicitation_with(
                    ElicitationCapability::new().with_url(UrlElicitationCapability::new()),
                )
                .build(),
            rmcp::model::Implementation::new("consenting-e2e", "0"),
        )
    }

    #[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _cx: rmcp::service::NotificationContext<rmcp::service::RoleClient>,
    ) {
        self.logs.lock().expect("lock").push(params.data);
    }

    async fn create_elicitation(
        &self,
        params: rmcp::model::ElicitRequestParams,
        _cx: rmcp::service::RequestContext<rmcp::service::RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};
        let ElicitRequestParams::UrlElicitationParams { url, .. } = params else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        self.asked.lock().expect("lock").push(url.clone());
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let back = me.oidc.authorize(&url, me.account).await;
            let resp = client_from(me.from)
                .get(&back)
                .send()
                .await
                .expect("callback");
            assert_eq!(resp.status(), 200);
        });
        Ok(ElicitResult::new(ElicitationAction::Accept))
    }
}

#[tokio::test]
async fn a_call_of_an_unconnected_connector_asks_for_consent_and_goes_on_once_connected() {
    use rmcp::ServiceExt as _;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let oidc = Arc::new(Oidc::start(3600));
    let up = portcullis_e2e::mcp_server::McpServer::start(oidc.introspection()).await;
    let whois = users().await;
    let mut wiki = notes_connector(&oidc, &Upstream::start().await, "wiki-app");
    wiki["protocol"] = json!("mcp");
    wiki["url"] = json!(up.url());
    let host = Host::start(&tailnet_config(&whois.socket, json!({"wiki": wiki})));
    client_for(&oidc, &host, "wiki-app", "wiki").await;

    // Alice's client takes URL elicitation; she has never connected "wiki". Her call
    // asks her to authorize, waits while she does, and then runs with her token.
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = Consenting {
        oidc: oidc.clone(),
        from: ALICE,
        account: "alice",
        asked: asked.clone(),
        logs: logs.clone(),
    };
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
        client_from(ALICE),
        StreamableHttpClientTransportConfig::with_uri(host.url("/v1/mcp")),
    );
    let alice = handler.serve(transport).await.expect("alice connects");
    let r = alice.call_tool(echo("hi")).await.expect("the call goes on");
    assert_eq!(result_text(&r), "echo: hi (for alice)");
    let urls = asked.lock().expect("lock").clone();
    assert_eq!(urls.len(), 1, "{urls:?}");
    assert!(urls[0].starts_with(&oidc.issuer), "{urls:?}");
    assert_eq!(status(&host, ALICE, "wiki").await, "Ready");
    // Connected now: the next call asks nothing.
    let r = alice.call_tool(echo("again")).await.expect("call");
    assert_eq!(result_text(&r), "echo: again (for alice)");
    assert_eq!(asked.lock().expect("lock").len(), 1);

    // What Alice's own upstream session logs reaches her session.
    let log = rmcp::model::CallToolRequestParams::new("wiki_log");
    assert_eq!(
        result_text(&alice.call_tool(log).await.expect("log")),
        "logged"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while logs.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *logs.lock().expect("lock"),
        [json!("logged (for alice)")],
        "a per-user session's log message reaches its user"
    );
    alice.cancel().await.expect("close");

    // Bob's client speaks MCP 2026-07-28: no session, so the gateway cannot send him a
    // request. The authorization comes back in an InputRequiredResult instead; his
    // client answers it with its next round (rmcp drives the rounds), and that round
    // waits while he authorizes, then runs the call with his token.
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = Consenting {
        oidc: oidc.clone(),
        from: BOB,
        account: "bob",
        asked: asked.clone(),
        logs: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
        client_from(BOB),
        StreamableHttpClientTransportConfig::with_uri(host.url("/v1/mcp/wiki")),
    );
    let bob = handler
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("bob discovers the server");
    let r = bob
        .call_tool(
            rmcp::model::CallToolRequestParams::new("echo").with_arguments(
                json!({"text": "modern"})
                    .as_object()
                    .cloned()
                    .expect("object"),
            ),
        )
        .await
        .expect("the call goes on after the rounds");
    assert_eq!(result_text(&r), "echo: modern (for bob)");
    let urls = asked.lock().expect("lock").clone();
    assert_eq!(urls.len(), 1, "{urls:?}");
    assert!(urls[0].starts_with(&oidc.issuer), "{urls:?}");
    assert_eq!(status(&host, BOB, "wiki").await, "Ready");
    bob.cancel().await.expect("close");
}

/// The upstream decides that every token it has seen has expired, before the host
/// thinks so (the tokens live an hour here), and `call` goes through the host once: the
/// host must take the upstream's 401, refresh the user's token exactly once and send the
/// same request again with the new token. Shared by the HTTP proxy's and the MCP
/// upstream's tests, which take the same pipeline for it.
async fn upstream_expires_the_token<F>(oidc: &Oidc, expiry: &TokenExpiry, call: F)
where
    F: std::future::Future<Output = ()>,
{
    let refreshes = oidc.grants_of("refresh_token").await;
    let rejected = expiry.rejected();
    expiry.expire_seen();
    call.await;
    assert!(
        expiry.rejected() > rejected,
        "the expired token was sent and refused first"
    );
    assert_eq!(
        oidc.grants_of("refresh_token").await,
        refreshes + 1,
        "exactly one refresh"
    );
}

#[tokio::test]
async fn a_token_the_upstream_says_expired_is_refreshed_and_the_proxied_request_resent() {
    let n = notes(3600, "notes-resend").await;
    connect_as(&n.host, &n.oidc, ALICE, "alice", "notes").await;
    let first = token_sent(&n.host, ALICE, "/v1/connectors/notes/items").await;
    let mut second = String::new();
    upstream_expires_the_token(&n.oidc, &n.up.counters.expiry, async {
        second = token_sent(&n.host, ALICE, "/v1/connectors/notes/items").await;
    })
    .await;
    assert_ne!(first, second, "the resent request carried the new token");
    assert!(n.oidc.introspect(&second).await.0);
    // A request with a body streams once: the 401 reaches the agent, and the next
    // request uses the token refreshed for it.
    n.up.counters.expiry.expire_seen();
    let resp = client_from(ALICE)
        .post(n.host.url("/v1/connectors/notes/items"))
        .body("{\"title\": \"x\"}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401);
    let third = token_sent(&n.host, ALICE, "/v1/connectors/notes/items").await;
    assert_ne!(third, second);
}

#[tokio::test]
async fn a_token_the_upstream_says_expired_is_refreshed_and_the_mcp_message_resent() {
    use portcullis_e2e::mcp_agent_from;
    use portcullis_e2e::mcp_server::McpServer;
    let oidc = Oidc::start(3600);
    let up = McpServer::start(oidc.introspection()).await;
    let whois = users().await;
    let mut wiki = notes_connector(&oidc, &Upstream::start().await, "wiki-resend");
    wiki["protocol"] = json!("mcp");
    wiki["url"] = json!(up.url());
    let host = Host::start(&tailnet_config(&whois.socket, json!({"wiki": wiki})));
    client_for(&oidc, &host, "wiki-resend", "wiki").await;
    connect_as(&host, &oidc, ALICE, "alice", "wiki").await;
    let alice = mcp_agent_from(&host.url("/v1/mcp"), ALICE).await;
    let r = alice.call_tool(echo("before")).await.expect("call");
    assert_eq!(result_text(&r), "echo: before (for alice)");
    upstream_expires_the_token(&oidc, up.expiry(), async {
        let r = alice.call_tool(echo("after")).await.expect("resent");
        assert_eq!(result_text(&r), "echo: after (for alice)");
    })
    .await;
    alice.cancel().await.expect("close");
}

/// A resource's protected-resource metadata may not send discovery and registration
/// anywhere: the authorization server it names must be a plain https URL (http only for
/// an http resource), without credentials, query or fragment.
#[tokio::test]
async fn dynamic_registration_refuses_an_authorization_server_a_resource_may_not_name() {
    let whois = users().await;
    for named in [
        "ftp://127.0.0.1:1/",
        "http://user:pw@127.0.0.1:1/",
        "http://127.0.0.1:1/?tenant=x",
    ] {
        let api = Fixture::start().await;
        api.json(
            "/.well-known/oauth-protected-resource",
            200,
            json!({"resource": api.url(), "authorization_servers": [named]}),
        );
        let host = Host::start(&tailnet_config(
            &whois.socket,
            json!({"wiki": {"protocol": "http", "url": api.url(), "auth": {"type": "oauth2_dcr"}}}),
        ));
        let resp = client_from(ALICE)
            .post(host.url("/api/connectors/wiki/connect"))
            .send()
            .await
            .expect("connect");
        let (status, code, message) = error_of(resp).await;
        assert_eq!(
            (status, code.as_str()),
            (502, "connector_misconfigured"),
            "{named}: {message}"
        );
        assert!(message.contains("authorization server"), "{message}");
        assert!(!message.contains("pw"), "{message}");
        // Nothing was asked of the named server: only the resource was asked for its
        // challenge (without a token) and its metadata read.
        assert!(
            api.seen()
                .iter()
                .all(|r| r.path == "/"
                    || r.path.starts_with("/.well-known/oauth-protected-resource"))
        );
    }
}

/// Kill -9 while every user's token is refreshed again and again: after the restart the
/// vault opens, each user's sealed tokens are whole, and every user is served without
/// connecting again. Tokens are written before they are used, so nothing a caller was
/// answered with is lost; with a provider that retires each refresh token on use, a kill
/// between its answer and the vault write would lose that one connection (the new
/// refresh token existed only in that answer), which is why this provider keeps them.
#[tokio::test]
async fn kill_9_during_per_user_refreshes_leaves_every_connection_usable() {
    const USERS: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let oidc = Oidc::start_with(1, false);
    let up = Upstream::start().await;
    let whois = Whois::start().await;
    let mut grants = Vec::new();
    for (n, ip) in USERS.iter().enumerate() {
        let login = format!("user{n}@example.com");
        whois.user(ip, &login, &[], json!({}));
        grants.push(grant(&login, &["notes/**"], false));
    }
    let config = json!({
        "identity": {"mode": "tailscale", "socket": whois.socket, "cache_ttl_secs": 0},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": {"notes": notes_connector(&oidc, &up, "notes-crash")}},
        "grants": grants,
    })
    .to_string();
    let mut host = Host::start(&config);
    client_for(&oidc, &host, "notes-crash", "notes").await;
    for (n, ip) in USERS.iter().enumerate() {
        connect_as(&host, &oidc, ip, &format!("user{n}"), "notes").await;
    }

    // Each user calls without pause (bounded: 2000 calls or 6 s); a token lives 1 s, so
    // the host refreshes and writes each user's tokens several times before the kill.
    let callers: Vec<_> = USERS
        .iter()
        .map(|ip| {
            let (ip, url) = (*ip, host.url("/v1/connectors/notes/items"));
            tokio::spawn(async move {
                let client = client_from(ip);
                let mut tokens = std::collections::HashSet::new();
                let until = Instant::now() + Duration::from_secs(6);
                for _ in 0..2000 {
                    if Instant::now() > until {
                        break;
                    }
                    let Ok(resp) = client.get(&url).send().await else {
                        break; // the host is gone
                    };
                    if resp.status() != 200 {
                        continue;
                    }
                    let Ok(echo) = resp.json::<Value>().await else {
                        break;
                    };
                    if let Some(t) = echo["headers"]["authorization"][0].as_str() {
                        tokens.insert(t.to_owned());
                    }
                }
                tokens
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    host.signal("KILL");
    let mut used = Vec::new();
    for c in callers {
        used.push(c.await.expect("caller"));
    }
    let counts: Vec<usize> = used.iter().map(std::collections::HashSet::len).collect();
    assert!(
        counts.iter().all(|&n| n >= 2),
        "every user's token was refreshed before the kill: distinct tokens used {counts:?}"
    );
    let data = host.data_dir();
    let _ = host.stop();

    let host = Host::start_with(
        &config,
        HostOptions {
            data_dir: Some(data),
            ..HostOptions::default()
        },
    );
    // Every access token from before the kill has expired by now: a call is served only
    // if the user's refresh token came back whole from the vault.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (n, ip) in USERS.iter().enumerate() {
        assert_eq!(status(&host, ip, "notes").await, "Ready", "user{n}");
        let token = format!(
            "Bearer {}",
            token_sent(&host, ip, "/v1/connectors/notes/items").await
        );
        assert!(
            used.iter().all(|before| !before.contains(&token)),
            "user{n} was served after a refresh with the refresh token restored from the vault"
        );
    }
}
