//! Identity: tailscaled LocalAPI whois (users, tagged nodes, groups, capability grants,
//! unknown peers, LocalAPI down), serve headers, and loopback mode. Test callers are told
//! apart by the 127.0.0.0/8 address they connect from.

use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::whois::Whois;
use portcullis_e2e::{Host, client_from, error_at, error_of, grant};
use serde_json::{Value, json};

fn tailscale_config(socket: &std::path::Path, up: &Upstream, grants: Value) -> String {
    json!({
        "identity": {"mode": "tailscale", "socket": socket, "cache_ttl_secs": 0},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": {
            "api": {"protocol": "http", "url": up.url(), "auth": {"type": "bearer_token", "secret": "s"}},
            "jira": {"protocol": "http", "url": up.url()},
        }},
        "grants": grants,
    })
    .to_string()
}

async fn get(from: &str, host: &Host, path: &str) -> reqwest::Response {
    client_from(from)
        .get(host.url(path))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn whois_identifies_users_tags_groups_and_policy_caps() {
    let whois = Whois::start().await;
    let up = Upstream::start().await;
    whois.user("127.0.0.2", "alice@example.com", &[], json!({}));
    whois.user("127.0.0.3", "bob@example.com", &["group:eng"], json!({}));
    whois.tagged("127.0.0.4", &["tag:prod", "tag:api"]);
    whois.user(
        "127.0.0.5",
        "carol@example.com",
        &[],
        json!({"tailscale.com/cap/aperture": [{"connectors": ["jira/proxy"]}]}),
    );
    let grants = json!([
        grant("alice@example.com", &["api/**"], true),
        grant("group:eng", &["jira/**"], false),
        grant("tag:api,tag:prod", &["api/proxy"], false),
    ]);
    let host = Host::start(&tailscale_config(&whois.socket, &up, grants));

    let me: Value = get("127.0.0.2", &host, "/api/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["login"], "alice@example.com");
    assert_eq!(me["role"], "admin");
    assert_eq!(
        get("127.0.0.2", &host, "/v1/connectors/api/x")
            .await
            .status(),
        200
    );
    assert_eq!(
        get("127.0.0.2", &host, "/v1/connectors/jira/x")
            .await
            .status(),
        403
    );

    assert_eq!(
        get("127.0.0.3", &host, "/v1/connectors/jira/x")
            .await
            .status(),
        200
    );
    assert_eq!(
        get("127.0.0.3", &host, "/v1/connectors/api/x")
            .await
            .status(),
        403
    );

    let tag: Value = get("127.0.0.4", &host, "/api/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(tag["login"], "tag:api,tag:prod");
    assert_eq!(tag["kind"], "tagged");
    assert_eq!(
        get("127.0.0.4", &host, "/v1/connectors/api/x")
            .await
            .status(),
        200
    );

    // Grants from the tailnet policy file arrive in whois' CapMap and add to config grants.
    assert_eq!(
        get("127.0.0.5", &host, "/v1/connectors/jira/x")
            .await
            .status(),
        200
    );
    assert_eq!(
        get("127.0.0.5", &host, "/v1/connectors/api/x")
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn unknown_loopback_peer_is_loopback_and_unidentifiable_nodes_are_401() {
    let whois = Whois::start().await;
    let up = Upstream::start().await;
    whois.set("127.0.0.6", json!({"Node": {"ID": 7, "StableID": "nX"}, "UserProfile": {"ID": 0, "LoginName": ""}, "CapMap": {}}));
    let grants = json!([grant("(loopback)", &["jira/**"], false)]);
    let host = Host::start(&tailscale_config(&whois.socket, &up, grants));

    // 127.0.0.9 is unknown to whois (404) but local: it is "(loopback)".
    let me: Value = get("127.0.0.9", &host, "/api/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["login"], "(loopback)");
    assert_eq!(
        get("127.0.0.9", &host, "/v1/connectors/jira/x")
            .await
            .status(),
        200
    );
    assert_eq!(
        get("127.0.0.9", &host, "/v1/connectors/api/x")
            .await
            .status(),
        403
    );

    // A node with neither user nor tags gets nothing.
    let (s, code, msg) = error_of(get("127.0.0.6", &host, "/v1/connectors/jira/x").await).await;
    assert_eq!((s, code.as_str()), (401, "unauthenticated"));
    assert!(msg.contains("neither a user nor tags"), "{msg}");
    assert_eq!(up.hits(), 1);
    assert!(whois.lookups() >= 4);
}

#[tokio::test]
async fn localapi_down_fails_closed_with_503() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let absent = dir.path().join("tailscaled.sock");
    let grants = json!([grant("*", &["**"], true)]);
    let host = Host::start(&tailscale_config(&absent, &up, grants));
    for path in ["/v1/connectors/api/x", "/api/whoami", "/metrics"] {
        let (s, code, msg) = error_of(get("127.0.0.2", &host, path).await).await;
        assert_eq!((s, code.as_str()), (503, "identity_unavailable"), "{path}");
        assert!(msg.contains("tailscaled"), "{msg}");
    }
    assert_eq!(up.hits(), 0);
    // Health is not identity-gated (orchestrators probe it from outside the tailnet), and
    // it says the host cannot serve (startup::tailscale_mode_is_not_ready_until_tailscaled_answers).
    assert_eq!(get("127.0.0.2", &host, "/healthz").await.status(), 503);
}

#[tokio::test]
async fn serve_headers_mode_trusts_headers_from_loopback_only() {
    let up = Upstream::start().await;
    let config = json!({
        "identity": {"mode": "serve-headers"},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": {"api": {"protocol": "http", "url": up.url()}}},
        "grants": [grant("dana@example.com", &["api/**"], false)],
    })
    .to_string();
    let host = Host::start(&config);
    let c = client_from("127.0.0.1");
    let resp = c
        .get(host.url("/v1/connectors/api/x"))
        .header("Tailscale-User-Login", "dana@example.com")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let e: Value = resp.json().await.expect("json");
    assert!(
        e["headers"].get("tailscale-user-login").is_none(),
        "identity header leaked upstream"
    );
    let (s, code, _) = error_at(&host.url("/v1/connectors/api/x")).await;
    assert_eq!((s, code.as_str()), (401, "unauthenticated"));
}

#[tokio::test]
async fn loopback_mode_and_the_embedded_default() {
    // The embedded default: loopback identity, (loopback) is admin.
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = std::process::Command::new(portcullis_e2e::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("ready line");
    let addr = line
        .trim()
        .strip_prefix("portcullis listening on ")
        .expect("ready line")
        .to_owned();
    let me: Value = client_from("127.0.0.1")
        .get(format!("{addr}/api/whoami"))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(me["login"], "(loopback)");
    assert_eq!(me["role"], "admin");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn loopback_peers_are_never_served_from_the_identity_cache() {
    // Local processes and tailscaled-forwarded connections share 127.0.0.1: a reused
    // port must not inherit an earlier caller's identity, whatever the cache TTL.
    let whois = Whois::start().await;
    let up = Upstream::start().await;
    whois.user("127.0.0.7", "erin@example.com", &[], json!({}));
    let config = tailscale_config(&whois.socket, &up, json!([]))
        .replace("\"cache_ttl_secs\":0", "\"cache_ttl_secs\":60");
    assert!(config.contains("\"cache_ttl_secs\":60"));
    let host = Host::start(&config);
    let me: Value = get("127.0.0.7", &host, "/api/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["login"], "erin@example.com");
    whois.user("127.0.0.7", "frank@example.com", &[], json!({}));
    let me: Value = get("127.0.0.7", &host, "/api/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["login"], "frank@example.com");
}
