//! The browser defence: a web page a tailnet user opens must not be able to use that
//! user's identity. Cross-site requests and rebound host names are refused on every
//! route, upstream CORS headers are never relayed, preflights are answered by the host;
//! agents and curl, which send no browser headers, are unaffected.

use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, client};
use serde_json::{Value, json};

use crate::{admin_everything, loopback_config};

async fn host_with(up: &Upstream, extra: Value) -> Host {
    let mut config: Value = serde_json::from_str(&loopback_config(
        json!({"api": {"protocol": "http", "url": up.url(),
               "auth": {"type": "bearer_token", "secret": "s3cret"}}}),
        admin_everything(),
    ))
    .expect("config");
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Host::start(&config.to_string())
}

/// Sends `method path` with `headers`; answers the status and the parsed JSON error code
/// (empty when the body is not an error).
async fn send(host: &Host, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client().request(
        reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
        host.url(path),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

const CROSS_SITE_FORM: &[(&str, &str)] = &[
    ("origin", "http://evil.example"),
    ("sec-fetch-site", "cross-site"),
    ("sec-fetch-mode", "no-cors"),
    ("content-type", "application/x-www-form-urlencoded"),
];

#[tokio::test]
async fn cross_site_browser_requests_are_refused_everywhere_and_curl_is_not() {
    let up = Upstream::start().await;
    let host = host_with(&up, json!({})).await;
    for path in [
        "/v1/connectors/api/x",
        "/api/whoami",
        "/api/config/connectors",
        "/v1/mcp",
        "/api/connectors/api/connect",
    ] {
        let (status, code) = send(&host, "POST", path, CROSS_SITE_FORM).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
    }
    // Older browsers: Origin alone, or the opaque origin of a sandboxed page.
    for origin in ["http://evil.example", "null"] {
        let (status, _) = send(&host, "GET", "/v1/connectors/api/x", &[("origin", origin)]).await;
        assert_eq!(status, 403, "{origin}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");

    // curl, agents, and the browser's own pages pass.
    assert_eq!(send(&host, "GET", "/v1/connectors/api/x", &[]).await.0, 200);
    let own = format!("http://{}", host.addr);
    let same = [("origin", own.as_str()), ("sec-fetch-site", "same-origin")];
    assert_eq!(send(&host, "GET", "/api/whoami", &same).await.0, 200);
    assert_eq!(
        send(&host, "GET", "/api/whoami", &[("sec-fetch-site", "none")])
            .await
            .0,
        200
    );
    assert_eq!(up.hits(), 1);

    // The provider sends the browser back to the callback as a top-level navigation:
    // that reaches the callback (which then judges the state).
    let back = client()
        .get(host.url("/aperture/auth/api/callback?state=x&code=y"))
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .send()
        .await
        .expect("request");
    assert_eq!(back.status(), 400);
    assert!(
        back.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/html")
    );
    // ...but a cross-site navigation elsewhere is refused.
    let (status, _) = send(
        &host,
        "GET",
        "/v1/connectors/api/x",
        &[
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ],
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_rebound_host_name_is_refused_on_every_route() {
    let up = Upstream::start().await;
    let host = host_with(
        &up,
        json!({"http": {"allowed_hosts": ["gw.example.ts.net"]}}),
    )
    .await;
    for path in [
        "/v1/connectors/api/x",
        "/api/whoami",
        "/api/config",
        "/v1/mcp",
    ] {
        let (status, code) = send(&host, "GET", path, &[("host", "rebind.attacker.example")]).await;
        assert_eq!((status, code.as_str()), (421, "unknown_host"), "{path}");
    }
    assert_eq!(up.hits(), 0);
    let port = host.addr.port();
    for name in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "gw.example.ts.net".to_owned(),
    ] {
        let (status, _) = send(&host, "GET", "/api/whoami", &[("host", &name)]).await;
        assert_eq!(status, 200, "{name}");
    }
    // Readiness answers probes whatever name they use.
    let (status, _) = send(&host, "GET", "/healthz", &[("host", "10.0.0.9:8080")]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstream_cors_headers_are_never_relayed_and_preflights_stay_here() {
    let up = Upstream::start().await;
    let host = host_with(
        &up,
        json!({"http": {"cors_origins": ["https://tools.example.com"]}}),
    )
    .await;
    let resp = client()
        .get(host.url("/v1/connectors/api/__cors"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    for h in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
        "timing-allow-origin",
    ] {
        assert!(!resp.headers().contains_key(h), "{h} relayed");
    }
    assert_eq!(resp.headers()["x-kept"], "yes");

    // A preflight from a foreign origin is refused here and never forwarded.
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, host.url("/v1/connectors/api/x"))
            .header("origin", origin)
            .header("sec-fetch-site", "cross-site")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let refused = preflight("http://evil.example").await.expect("preflight");
    assert_eq!(refused.status(), 403);
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    // A configured origin gets an answer from the host itself.
    let allowed = preflight("https://tools.example.com")
        .await
        .expect("preflight");
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://tools.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-headers"],
        "content-type"
    );
    assert_eq!(up.hits(), 1, "only the first GET reached the upstream");
    // And its real requests carry the host's CORS answer, not the upstream's.
    let resp = client()
        .get(host.url("/v1/connectors/api/__cors"))
        .header("origin", "https://tools.example.com")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://tools.example.com"
    );
    assert!(
        !resp
            .headers()
            .contains_key("access-control-allow-credentials")
    );
}

#[test]
fn cors_origins_must_be_origins() {
    let bad = json!({"identity": {"mode": "loopback"},
        "http": {"cors_origins": ["*", "https://tools.example.com/app", "tools.example.com"]}})
    .to_string();
    let err = Host::try_start(&bad, Default::default())
        .err()
        .expect("must not start");
    for i in 0..3 {
        assert!(
            err.contains(&format!("error: http.cors_origins[{i}]")),
            "{err}"
        );
    }
}

/// A link to an upstream's HTML page, opened in a tailnet user's browser, renders
/// sandboxed: its scripts cannot run on the host's origin (where the admin API is), and
/// the upstream's headers that act on the whole origin are not relayed.
#[tokio::test]
async fn an_upstream_page_opened_in_a_browser_is_sandboxed() {
    let up = Upstream::start().await;
    let host = host_with(&up, json!({})).await;
    // As a browser sends a pasted link: same-origin by Fetch Metadata, a navigation.
    let resp = client()
        .get(host.url("/v1/connectors/api/__page"))
        .header("sec-fetch-site", "none")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-security-policy"], "sandbox", "{h:?}");
    assert_eq!(h.get_all("content-security-policy").iter().count(), 1);
    assert_eq!(h["x-content-type-options"], "nosniff");
    for gone in [
        "service-worker-allowed",
        "strict-transport-security",
        "clear-site-data",
    ] {
        assert!(!h.contains_key(gone), "{gone} relayed");
    }
    assert_eq!(h["content-type"], "text/html", "the body is the upstream's");
}

/// Over plain HTTP a browser sends no Fetch Metadata with an image or a link, but
/// usually a `Referer`: another site's is refused; the host's own pages pass.
#[tokio::test]
async fn a_request_from_another_sites_page_without_fetch_metadata_is_refused_by_its_referer() {
    let up = Upstream::start().await;
    let host = host_with(&up, json!({})).await;
    let refused = send(
        &host,
        "GET",
        "/v1/connectors/api/x",
        &[("referer", "http://evil.example/page")],
    )
    .await;
    assert_eq!(refused, (403, "forbidden".to_owned()));
    let own = format!("http://{}/ui/", host.addr);
    let passed = send(
        &host,
        "GET",
        "/v1/connectors/api/x",
        &[("referer", own.as_str())],
    )
    .await;
    assert_eq!(passed, (200, String::new()));
    assert_eq!(
        up.hits(),
        1,
        "only the host's own page reached the upstream"
    );
}

/// A provider sends the browser back to the OAuth callback as a top-level navigation from
/// its own site; the same URL loaded in a frame of someone's page is refused.
#[tokio::test]
async fn the_callback_takes_a_top_level_navigation_from_another_site_but_not_a_frame() {
    let up = Upstream::start().await;
    let host = host_with(&up, json!({})).await;
    let from_provider = |dest: &'static str| {
        [
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", dest),
        ]
    };
    let path = "/aperture/auth/api/callback?code=c&state=s";
    let framed = send(&host, "GET", path, &from_provider("iframe")).await;
    assert_eq!(framed, (403, "forbidden".to_owned()));
    let (status, code) = send(&host, "GET", path, &from_provider("document")).await;
    assert_ne!(
        (status, code.as_str()),
        (403, "forbidden"),
        "the callback itself answers a top-level navigation"
    );
}
