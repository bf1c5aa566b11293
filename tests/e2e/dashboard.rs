//! The dashboard at `/ui/` in a real browser: Debian's Chromium driven by
//! `playwright-core` (`tests/peers/ui/dashboard.mjs`) against the real host, with the
//! `oidc-provider` peer behind a per-user connector and an MCP upstream behind a shared
//! one. The script adds a Salesforce connector from the picker and checks the masked
//! preview is what the admin API returns, follows the callback URL as the ID changes,
//! edits scope chips, connects and disconnects a user, shows a config mistake at its
//! line and a stale save explained, edits grants, runs axe-core on each page, and writes
//! screenshots under `target/ui-screenshots/`. The assets' own rules (policy headers,
//! the browser defence letting the page through) are checked here over HTTP.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::mcp_server::{Expect, McpServer};
use portcullis_e2e::oidc::Oidc;
use portcullis_e2e::{Host, HostOptions, client, get_json, registry_copy, workspace};
use serde_json::json;

use crate::{admin_everything, loopback_config};

/// The browser binary: `PORTCULLIS_CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PORTCULLIS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is not at {} (the browser tests need it): install Debian's chromium package (the README's test command does), or set PORTCULLIS_CHROMIUM",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let chromium = chromium();
    let peers = workspace().join("tests").join("peers");
    assert!(
        peers.join("node_modules").join("playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/peers` (the README's test command does)"
    );
    let oidc = Oidc::start(3600);
    let up = McpServer::start(Expect::Header(
        "authorization".into(),
        "Bearer mcp-token".into(),
    ))
    .await;
    let reg = registry_copy(&portcullis_e2e::verified_providers());
    // An entry that does not load: the picker shows it with the reason.
    let broken = reg.path().join("broken");
    std::fs::create_dir(&broken).expect("broken entry");
    std::fs::write(broken.join("plugin.toml"), "not a manifest").expect("manifest");
    let connectors = json!({
        "notes": {
            "protocol": "http",
            "url": format!("{}/me", oidc.issuer),
            "description": "Notes API, one connection per user",
            "auth": {
                "type": "oauth2_authorization_code",
                "client_id": "dashboard-client",
                "client_secret": "dashboard-secret-0123456789",
                "authorization_url": format!("{}/auth", oidc.issuer),
                "token_url": format!("{}/token", oidc.issuer),
                "revocation_url": format!("{}/token/revocation", oidc.issuer),
                "scopes": ["openid", "offline_access"],
                "auth_params": {"prompt": "consent"},
            },
        },
        "tools": {
            "protocol": "mcp",
            "url": up.url(),
            "description": "A shared MCP server",
            "auth": {"type": "bearer_token", "secret": "mcp-token"},
        },
    });
    let host = Host::start_with(
        &loopback_config(connectors, admin_everything()),
        HostOptions {
            env: vec![(
                "PORTCULLIS_REGISTRY".to_owned(),
                reg.path().display().to_string(),
            )],
            ..Default::default()
        },
    );
    oidc.add_client(json!({
        "client_id": "dashboard-client",
        "client_secret": "dashboard-secret-0123456789",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [host.url("/aperture/auth/notes/callback")],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "openid offline_access",
    }))
    .await;

    let out = workspace().join("target").join("ui-screenshots");
    let mut cmd = Command::new("node");
    cmd.arg(peers.join("ui").join("dashboard.mjs"))
        .env("PORTCULLIS_URL", host.url(""))
        .env("CHROMIUM", &chromium)
        .env("OUT_DIR", &out)
        .stdin(Stdio::null());
    // `PORTCULLIS_UPDATE_DOCS=1` refreshes the README's screenshots in docs/.
    if std::env::var_os("PORTCULLIS_UPDATE_DOCS").is_some() {
        cmd.env("DOCS_DIR", workspace().join("docs").join("screenshots"));
    }
    let mut child = cmd.spawn().expect("start node for the browser test");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().expect("browser test") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the browser test took over 240 s; screenshots in {}",
                out.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        status.success(),
        "the browser test failed (its output is above; target/ui-screenshots/failure.png shows the page). Host log:\n{}",
        host.logs()
    );

    // What the browser did, seen from the host: neither the saved file nor the log
    // holds a typed secret, and the vault holds the last one (kept after the
    // connector's removal, as `.prev` may refer to it; docs/admin-api.md).
    let file = std::fs::read_to_string(&host.config_path).expect("config file");
    let logs = host.logs();
    for typed in [
        "sf-secret-value-0123456789",
        "sf-rotated-0123456789",
        "extra-value-0123456789",
    ] {
        assert!(
            !file.contains(typed),
            "a typed secret reached the config file"
        );
        assert!(!logs.contains(typed), "a typed secret reached the log");
    }
    let secrets = get_json(&host.url("/api/secrets")).await;
    assert!(
        secrets["secrets"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["name"] == "SalesforceProd_client_secret_2")),
        "the typed secret is in the vault: {secrets}"
    );
}

/// The assets carry a strict policy, and the page opens from a link on another site
/// (it holds no data) while the API behind it still refuses that site.
#[tokio::test]
async fn the_page_is_served_with_its_policy_and_opens_from_elsewhere() {
    let host = Host::start(&loopback_config(json!({}), admin_everything()));
    let c = client();

    for path in ["/", "/ui"] {
        let resp = c.get(host.url(path)).send().await.expect("GET /");
        assert_eq!(resp.status(), 303, "{path}");
        assert_eq!(
            resp.headers()["location"],
            "/ui/",
            "{path} leads to the dashboard"
        );
    }
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let resp = c.get(host.url(path)).send().await.expect("asset");
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap_or("").starts_with(kind),
            "{path}: {:?}",
            h["content-type"]
        );
        let csp = h["content-security-policy"].to_str().unwrap_or("");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    let missing = c
        .get(host.url("/ui/secrets.json"))
        .send()
        .await
        .expect("missing");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("JSON 404");
    assert_eq!(body["error"]["code"], "not_found");

    // A link from another site opens the page...
    let nav = |path: &str, dest: &'static str| {
        c.get(host.url(path))
            .header("sec-fetch-site", "cross-site")
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-dest", dest)
    };
    assert_eq!(
        nav("/ui/", "document").send().await.expect("nav").status(),
        200
    );
    // ...but not inside a frame, and none of its data or its other files.
    assert_eq!(
        nav("/ui/", "iframe").send().await.expect("frame").status(),
        403
    );
    assert_eq!(
        nav("/ui/app.js", "script")
            .send()
            .await
            .expect("js")
            .status(),
        403
    );
    assert_eq!(
        nav("/api/connectors", "document")
            .send()
            .await
            .expect("api")
            .status(),
        403
    );
}

/// `GET /api/connectors/{id}/capabilities`, which the Connectors page shows: each caller
/// sees what their grants let them use, by the names agents call; no grant is a 403, an
/// unknown connector a 404, and a per-user connector not yet connected says so.
#[tokio::test]
async fn capabilities_follow_the_callers_grants() {
    const ALICE: &str = "127.0.0.2";
    const BOB: &str = "127.0.0.3";
    let whois = portcullis_e2e::whois::Whois::start().await;
    whois.user(ALICE, "alice@example.com", &[], json!({}));
    whois.user(BOB, "bob@example.com", &[], json!({}));
    let up = McpServer::start(Expect::Nothing).await;
    let config = json!({
        "identity": {"mode": "tailscale", "socket": whois.socket, "cache_ttl_secs": 0},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": {
            "tools": {"protocol": "mcp", "url": up.url()},
            "notes": {"protocol": "http", "url": up.url(), "auth": {"type": "oauth2_authorization_code",
                "client_id": "c", "authorization_url": "https://auth.example/authorize",
                "token_url": "https://auth.example/token"}},
        }},
        "grants": [
            portcullis_e2e::grant("alice@example.com", &["tools/tools/echo", "tools/resources/*", "notes/**"], false),
        ],
    });
    let host = Host::start(&config.to_string());
    let caps = |from: &'static str, id: &'static str| {
        let url = host.url(&format!("/api/connectors/{id}/capabilities"));
        async move {
            let resp = portcullis_e2e::client_from(from)
                .get(url)
                .send()
                .await
                .expect("capabilities");
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.expect("JSON"),
            )
        }
    };

    let (status, alice) = caps(ALICE, "tools").await;
    assert_eq!(status, 200, "{alice}");
    let tools: Vec<&str> = alice["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tools, ["tools_echo"], "only the granted tool: {alice}");
    assert_eq!(alice["endpoint"], "/v1/mcp");
    assert_eq!(alice["mcp_endpoint"], "/v1/mcp/tools");
    assert_eq!(alice["status"], "Ready");
    assert_eq!(
        alice["resources"].as_array().map(Vec::len),
        Some(2),
        "both resources are granted: {alice}"
    );
    assert_eq!(
        alice["templates"].as_array().map(Vec::len),
        Some(0),
        "no template is granted: {alice}"
    );

    let (status, notes) = caps(ALICE, "notes").await;
    assert_eq!(status, 200, "{notes}");
    assert_eq!(notes["status"], "Needs auth");
    assert_eq!(notes["endpoint"], "/v1/connectors/notes/");
    assert_eq!(
        notes["mcp_endpoint"],
        json!(null),
        "an HTTP API without tools"
    );
    assert_eq!(notes["tools"], json!([]));

    let (status, bob) = caps(BOB, "tools").await;
    assert_eq!(status, 403, "{bob}");
    assert_eq!(bob["error"]["code"], "forbidden");
    let (status, missing) = caps(ALICE, "nosuch").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "not_found");
}

/// A form adding a connector sends `If-None-Match: *`: it adds, and never replaces one
/// someone else saved under the same ID meanwhile.
#[tokio::test]
async fn adding_a_connector_never_replaces_one() {
    let host = Host::start(&loopback_config(json!({}), admin_everything()));
    let c = client();
    let put = |url: String, description: &'static str| {
        c.put(url)
            .header("if-none-match", "*")
            .json(&json!({"protocol": "http", "url": "https://api.example.com", "description": description}))
            .send()
    };
    let url = host.url("/api/config/connectors/api");
    let first = put(url.clone(), "first").await.expect("first");
    assert_eq!(first.status(), 201);
    let second = put(url.clone(), "second").await.expect("second");
    assert_eq!(second.status(), 409);
    let body: serde_json::Value = second.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "connector_exists");
    let saved = get_json(&url).await;
    assert_eq!(saved["server"]["description"], "first");
    // Any other If-None-Match is a mistake, not an unconditional save.
    let etag = c
        .put(url.clone())
        .header("if-none-match", "\"abc\"")
        .json(&json!({"protocol": "http", "url": "https://api.example.com"}))
        .send()
        .await
        .expect("etag");
    assert_eq!(etag.status(), 400);
    assert_eq!(get_json(&url).await["server"]["description"], "first");
}
