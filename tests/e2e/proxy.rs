//! `/v1/connectors/<id>/<path>`: forwarding, credential injection, header hygiene,
//! methods, paths, redirects, size limit, streaming, and every failure status.

use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, client, error_at, error_of, grant, raw, status_of};
use serde_json::{Value, json};

use crate::{admin_everything, loopback_config};

async fn echo(host: &Host, path: &str) -> Value {
    let resp = client().get(host.url(path)).send().await.expect("request");
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.expect("echo json")
}

fn bearer(up: &Upstream) -> Value {
    json!({"api": {"protocol": "http", "url": up.url(), "auth": {"type": "bearer_token", "secret": "tok-e2e-123"}}})
}

#[tokio::test]
async fn forwards_path_and_query_with_bearer_injected_and_caller_credentials_stripped() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let resp = client()
        .get(host.url(
            "/v1/connectors/api/repos/tailscale/tailscale/pulls?state=open&per_page=5&q=a%20b",
        ))
        .header("authorization", "Bearer caller-token")
        .header("cookie", "sid=caller")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("tailscale-user-login", "mallory@example.com")
        .header("proxy-authorization", "Basic eA==")
        .header("x-request-id", "r-1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "echo");
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["path"], "/repos/tailscale/tailscale/pulls");
    assert_eq!(e["query"], "state=open&per_page=5&q=a%20b");
    let h = &e["headers"];
    assert_eq!(h["authorization"], json!(["Bearer tok-e2e-123"]));
    for stripped in [
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "tailscale-user-login",
        "proxy-authorization",
    ] {
        assert!(
            h.get(stripped).is_none(),
            "{stripped} reached the upstream: {h}"
        );
    }
    assert_eq!(h["x-request-id"], json!(["r-1"]));
}

#[tokio::test]
async fn base_url_path_and_slashes_are_normalised() {
    let up = Upstream::start().await;
    let connectors = json!({"api": {"protocol": "http", "url": format!("{}/v1/", up.url())}});
    let host = Host::start(&loopback_config(connectors, admin_everything()));
    assert_eq!(
        echo(&host, "/v1/connectors/api/user").await["path"],
        "/v1/user"
    );
    assert_eq!(
        echo(&host, "/v1/connectors/api//a///b/").await["path"],
        "/v1/a/b/"
    );
    assert_eq!(echo(&host, "/v1/connectors/api").await["path"], "/v1/");
    assert_eq!(echo(&host, "/v1/connectors/api/").await["path"], "/v1/");
    assert_eq!(
        echo(&host, "/v1/connectors/api/projects/group%2Fproj").await["path"],
        "/v1/projects/group%2Fproj"
    );
}

#[tokio::test]
async fn api_key_in_header_and_query_and_basic() {
    let up = Upstream::start().await;
    let connectors = json!({
        "hdr": {"protocol": "http", "url": up.url(), "auth": {"type": "api_key", "secret": "k-123", "name": "X-API-Key", "in": "header"}},
        "qry": {"protocol": "http", "url": up.url(), "auth": {"type": "api_key", "secret": "k 456", "name": "api_key", "in": "query"}},
        "bas": {"protocol": "http", "url": up.url(), "auth": {"type": "basic", "username": "api-user@example.com", "password": "pw:1"}},
    });
    let host = Host::start(&loopback_config(connectors, admin_everything()));
    assert_eq!(
        echo(&host, "/v1/connectors/hdr/x").await["headers"]["x-api-key"],
        json!(["k-123"])
    );
    // The caller cannot smuggle its own value for the key's parameter.
    let q = echo(&host, "/v1/connectors/qry/x?a=1&api_key=caller").await;
    assert_eq!(q["query"], "a=1&api_key=k+456");
    let b = echo(&host, "/v1/connectors/bas/x").await;
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("api-user@example.com:pw:1")
    );
    assert_eq!(b["headers"]["authorization"], json!([expected]));
}

#[tokio::test]
async fn every_allowed_method_passes_with_streamed_bodies() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let c = client();
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let resp = c
            .request(
                m.parse().expect("method"),
                host.url("/v1/connectors/api/thing"),
            )
            .body(if m == "GET" {
                String::new()
            } else {
                format!("body of {m}")
            })
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{m}");
        let e: Value = resp.json().await.expect("json");
        assert_eq!(e["method"], m);
        if m != "GET" {
            assert_eq!(e["body"], format!("body of {m}"));
        }
    }
    let head = c
        .head(host.url("/v1/connectors/api/thing"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
    // A large request body streams through intact (chunked, no length known up front).
    let chunks =
        futures_util::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 64 * 1024])));
    let resp = c
        .post(host.url("/v1/connectors/api/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("upload");
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["body_len"], 64 * 64 * 1024);
    // A slow streamed response arrives whole.
    let slow = c
        .get(host.url("/v1/connectors/api/__slow"))
        .send()
        .await
        .expect("slow");
    assert_eq!(slow.text().await.expect("text"), "chunk0;chunk1;chunk2;");
}

#[tokio::test]
async fn trace_and_connect_are_405_before_any_upstream_contact() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let resp = client()
        .request(reqwest::Method::TRACE, host.url("/v1/connectors/api/x"))
        .send()
        .await
        .expect("trace");
    assert_eq!(
        resp.headers()["allow"],
        "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    );
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
    assert!(message.contains("TRACE"), "{message}");
    let (status, _) = raw::request(host.addr, "PROPFIND", "/v1/connectors/api/x", &[]).await;
    assert_eq!(status, 405);
    assert_eq!(up.hits(), 0, "the upstream was contacted");
}

#[tokio::test]
async fn traversal_in_any_spelling_is_400_before_any_upstream_contact() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    for target in [
        "/v1/connectors/api/../secret",
        "/v1/connectors/api/a/../../etc/passwd",
        "/v1/connectors/api/%2e%2e/secret",
        "/v1/connectors/api/%252e%252e/secret",
        "/v1/connectors/api/a%2f..%2fb",
        "/v1/connectors/api/..%5csecret",
        "/v1/connectors/api/./x",
    ] {
        let (status, text) = raw::request(host.addr, "GET", target, &[]).await;
        assert_eq!(status, 400, "{target}: {text}");
        assert!(text.contains("\"code\":\"bad_request\""), "{text}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn unknown_connector_404_no_grant_403_mcp_connector_404() {
    let up = Upstream::start().await;
    let mut connectors = bearer(&up);
    connectors["other"] = json!({"protocol": "http", "url": up.url()});
    // An MCP connector elsewhere: its background discovery must not count as proxy hits.
    connectors["tools"] = json!({"protocol": "mcp", "url": "http://127.0.0.1:9/mcp"});
    let grants = json!([grant(
        "(loopback)",
        &["api/proxy/allowed/**", "tools/**"],
        false
    )]);
    let host = Host::start(&loopback_config(connectors, grants));
    let (s, code, msg) = error_at(&host.url("/v1/connectors/nope/x")).await;
    assert_eq!((s, code.as_str()), (404, "not_found"));
    assert!(msg.contains("\"nope\""), "{msg}");
    let (s, code, msg) = error_at(&host.url("/v1/connectors/other/x")).await;
    assert_eq!((s, code.as_str()), (403, "forbidden"));
    assert!(
        msg.contains("other/proxy") && msg.contains("(loopback)"),
        "{msg}"
    );
    // Path-scoped grant: inside allowed, outside denied.
    assert_eq!(
        status_of(&host.url("/v1/connectors/api/allowed/a/b")).await,
        200
    );
    assert_eq!(status_of(&host.url("/v1/connectors/api/denied")).await, 403);
    let (s, _, msg) = error_at(&host.url("/v1/connectors/tools/x")).await;
    assert_eq!(s, 404);
    assert!(msg.contains("/v1/mcp"), "{msg}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let resp = client()
        .get(host.url("/v1/connectors/api/__redirect"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/__redirected");
    assert_eq!(
        up.counters
            .redirected_hits
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn set_cookie_and_hop_by_hop_response_headers_are_stripped() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let resp = client()
        .get(host.url("/v1/connectors/api/__cookie"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(resp.headers().get("x-hop-header").is_none());
    assert_eq!(resp.headers()["x-kept"], "yes");
}

#[tokio::test]
async fn responses_over_50_mb_are_cut_with_status_200() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let limit = 50 * 1024 * 1024;
    let resp = client()
        .get(host.url(&format!(
            "/v1/connectors/api/__big/{}",
            limit + 3 * 1024 * 1024 + 17
        )))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    assert!(resp.content_length().is_none_or(|n| n == limit as u64));
    let body = resp.bytes().await.expect("body");
    assert_eq!(body.len(), limit);
    host.wait_for_log("response truncated").await;
    // Just under the limit passes whole.
    let body = client()
        .get(host.url("/v1/connectors/api/__big/1000000"))
        .send()
        .await
        .expect("req")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body.len(), 1_000_000);
}

/// Reads a proxied body chunk by chunk: what arrived, and whether it ended cleanly.
async fn drain(mut resp: reqwest::Response) -> (String, bool) {
    let mut got = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// An upstream that goes silent for longer than `egress.read_timeout_secs` in the middle
/// of a response, right after the head or after some data, has its response abandoned
/// (the caller sees the stream cut, the log says why), while one that keeps sending,
/// however slowly, is relayed whole even when it takes longer than the timeout in all.
#[tokio::test]
async fn a_response_body_silent_past_the_read_timeout_is_cut_a_slow_steady_one_is_not() {
    let up = Upstream::start().await;
    let mut config: Value =
        serde_json::from_str(&loopback_config(bearer(&up), admin_everything())).expect("json");
    config["egress"]["read_timeout_secs"] = json!(1);
    let host = Host::start(&config.to_string());
    let get = |path: &str| {
        client()
            .get(host.url(&format!("/v1/connectors/api/{path}")))
            // Far beyond the proxy's 1 s, far short of the upstream's 60 s stalls: a
            // cut is the proxy's (the log below says so), not this client giving up.
            .timeout(std::time::Duration::from_secs(20))
            .send()
    };

    // Five chunks 400 ms apart: two seconds in all, never a second of silence.
    let resp = get("__drip/5/400/0").await.expect("steady");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        drain(resp).await,
        ("drip0;drip1;drip2;drip3;drip4;end".to_owned(), true)
    );

    // Silent from the head on (the upstream would answer after 60 s).
    let resp = get("__drip/0/0/60000").await.expect("head");
    assert_eq!(
        resp.status(),
        200,
        "the head was relayed before the silence"
    );
    assert_eq!(drain(resp).await, (String::new(), false));
    host.wait_for_log("upstream went silent mid-response").await;

    // Silent after two chunks.
    let resp = get("__drip/2/50/60000").await.expect("head");
    assert_eq!(resp.status(), 200);
    assert_eq!(drain(resp).await, ("drip0;drip1;".to_owned(), false));
    assert_eq!(
        host.logs()
            .matches("upstream went silent mid-response")
            .count(),
        2,
        "both stalls were cut by the proxy"
    );

    // The connector still works.
    let resp = get("__drip/1/0/0").await.expect("after");
    assert_eq!(drain(resp).await, ("drip0;end".to_owned(), true));
    // The cuts' log lines name the connector, never its credential.
    assert!(!host.logs().contains("tok-e2e-123"), "{}", host.logs());
}

#[tokio::test]
async fn loopback_upstream_refused_by_default_with_502() {
    let up = Upstream::start().await;
    let config = json!({
        "identity": {"mode": "loopback"},
        "connectors": {"servers": {
            "api": {"protocol": "http", "url": up.url()},
            "named": {"protocol": "http", "url": format!("http://localhost:{}", up.addr.port())},
            "meta": {"protocol": "http", "url": "http://169.254.169.254/latest/meta-data"},
        }},
        "grants": admin_everything(),
    })
    .to_string();
    let host = Host::start(&config);
    for id in ["api", "named", "meta"] {
        let (s, code, msg) = error_at(&host.url(&format!("/v1/connectors/{id}/x"))).await;
        assert_eq!((s, code.as_str()), (502, "egress_refused"), "{id}: {msg}");
        assert!(
            msg.contains("loopback") || msg.contains("metadata"),
            "{id}: {msg}"
        );
    }
    assert_eq!(up.hits(), 0);
    // Load-time warnings named them.
    let logs = host.logs();
    assert!(logs.contains("connectors.servers.api.url"), "{logs}");
    assert!(logs.contains("connectors.servers.meta.url"), "{logs}");
}

#[tokio::test]
async fn upstream_down_is_502() {
    let down = portcullis_e2e::refused_port();
    let connectors =
        json!({"down": {"protocol": "http", "url": format!("http://127.0.0.1:{}", down.port)}});
    let host = Host::start(&loopback_config(connectors, admin_everything()));
    let (s, code, msg) = error_at(&host.url("/v1/connectors/down/x")).await;
    assert_eq!((s, code.as_str()), (502, "upstream_unreachable"));
    assert!(msg.contains("\"down\""), "{msg}");
}

#[tokio::test]
async fn upstream_statuses_pass_through() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    for code in [201u16, 204, 400, 401, 404, 429, 500, 503] {
        let resp = client()
            .get(host.url(&format!("/v1/connectors/api/__status/{code}")))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status().as_u16(), code);
    }
}

/// The gateway answers in its own HTTP version whatever the upstream speaks: an
/// HTTP/1.0 upstream's answer reaches an HTTP/1.1 agent as HTTP/1.1, and the agent's
/// connection stays open for the next request.
#[tokio::test]
async fn an_http_1_0_upstream_is_answered_in_http_1_1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let connectors = json!({"old": {"protocol": "http", "url": format!("http://{addr}")}});
    let host = Host::start(&loopback_config(connectors, admin_everything()));
    let stream = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = http::Request::get("/v1/connectors/old/x")
            .header("host", host.addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .expect("the connection is still open");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert!(
            resp.headers()
                .get("connection")
                .is_none_or(|v| v != "close"),
            "{:?}",
            resp.headers()
        );
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"ok");
    }
}

#[tokio::test]
async fn every_seed_http_connector_behaves_as_documented() {
    // The seed documents' examples, verbatim except that `url` points at the local
    // upstream: each injects exactly the credential its document describes.
    let up = Upstream::start().await;
    let seeds = portcullis_e2e::workspace().join("tests/fixtures/seeds");
    use base64::Engine as _;
    let cases = [
        (
            "002-http-bearer-github.json",
            "github",
            "authorization",
            "Bearer <your-github-pat>".to_string(),
        ),
        (
            "002-http-github-description-context.json",
            "github",
            "authorization",
            "Bearer <your-github-pat>".to_string(),
        ),
        (
            "002-http-api-key-weather.json",
            "weather",
            "x-api-key",
            "<your-api-key>".to_string(),
        ),
        (
            "002-http-basic-jira.json",
            "jira",
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode("api-user@example.com:<your-api-token>")
            ),
        ),
    ];
    for (file, id, header, expected) in cases {
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(seeds.join(file)).expect("seed"))
                .expect("json");
        let original = doc["connectors"]["servers"][id]["url"]
            .as_str()
            .expect("url")
            .to_owned();
        let base_path = url::Url::parse(&original)
            .expect("url")
            .path()
            .trim_end_matches('/')
            .to_owned();
        doc["connectors"]["servers"][id]["url"] = json!(format!("{}{}", up.url(), base_path));
        doc["identity"] = json!({"mode": "loopback"});
        doc["egress"] = json!({"allow_loopback": true});
        let seed_grants: Value = serde_json::from_str(
            &std::fs::read_to_string(seeds.join("002-grants-github-aperture.json")).expect("g"),
        )
        .expect("json");
        doc["grants"] = seed_grants["grants"].clone();
        doc["grants"].as_array_mut().expect("list").push(grant(
            "*",
            &[&format!("{id}/proxy")],
            false,
        ));
        let host = Host::start(&doc.to_string());
        let e = echo(&host, &format!("/v1/connectors/{id}/user")).await;
        assert_eq!(e["headers"][header], json!([expected]), "{file}");
        assert_eq!(e["path"], format!("{base_path}/user"), "{file}");
    }
}

#[tokio::test]
async fn grants_see_the_segments_an_upstream_could_see() {
    let up = Upstream::start().await;
    let grants = json!([grant(
        "(loopback)",
        &["api/proxy/repos/*", "api/proxy/public/**"],
        false
    )]);
    let host = Host::start(&loopback_config(bearer(&up), grants));
    assert_eq!(
        status_of(&host.url("/v1/connectors/api/repos/one")).await,
        200
    );
    assert_eq!(
        status_of(&host.url("/v1/connectors/api/repos/one/")).await,
        200
    );
    // An encoded slash makes two segments for an upstream that decodes it: not covered by `*`.
    assert_eq!(
        status_of(&host.url("/v1/connectors/api/repos/one%2Fsecret")).await,
        403
    );
    assert_eq!(
        status_of(&host.url("/v1/connectors/api/repos/one%5Csecret")).await,
        403
    );
    assert_eq!(
        status_of(&host.url("/v1/connectors/api/public/a%2Fb")).await,
        200
    );
    for (target, want) in [
        ("/v1/connectors/api/public/..;/admin", 400),
        ("/v1/connectors/api/repos/x\\secret", 400),
    ] {
        let (status, text) = raw::request(host.addr, "GET", target, &[]).await;
        assert_eq!(status, want, "{target}: {text}");
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn query_api_key_never_reaches_the_caller_through_a_redirect() {
    let up = Upstream::start().await;
    let connectors = json!({"qry": {"protocol": "http", "url": up.url(),
        "auth": {"type": "api_key", "secret": "k/ey 9", "name": "api_key", "in": "query"}}});
    let host = Host::start(&loopback_config(connectors, admin_everything()));
    let resp = client()
        .get(host.url("/v1/connectors/qry/__redirect_query?page=2"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 301);
    assert!(
        resp.headers().get("location").is_none(),
        "a Location carrying the key was relayed"
    );
    assert!(resp.headers().get("content-location").is_none());
    assert_eq!(resp.headers()["x-kept"], "yes");
    host.wait_for_log("removed a response header").await;
    assert!(!host.logs().contains("k/ey"));
    // However the upstream spells it (lower-case hex, `/` unescaped), it is found.
    let resp = client()
        .get(host.url("/v1/connectors/qry/__redirect_requoted?page=2"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 301);
    assert!(resp.headers().get("location").is_none(), "{resp:?}");
    assert_eq!(resp.headers()["x-kept"], "yes");
}

#[tokio::test]
async fn caller_cannot_override_the_injected_key_header() {
    let up = Upstream::start().await;
    let connectors = json!({"hdr": {"protocol": "http", "url": up.url(),
        "auth": {"type": "api_key", "secret": "real-key", "name": "X-API-Key", "in": "header"}}});
    let host = Host::start(&loopback_config(connectors, admin_everything()));
    let e: Value = client()
        .get(host.url("/v1/connectors/hdr/x"))
        .header("x-api-key", "caller-key")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(e["headers"]["x-api-key"], json!(["real-key"]));
}

#[tokio::test]
async fn connect_is_405() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let (status, text) = raw::request(host.addr, "CONNECT", "/v1/connectors/api/x", &[]).await;
    assert_eq!(status, 405, "{text}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn http2_request_bodies_without_a_length_are_forwarded() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let chunks =
        futures_util::stream::iter((0..4).map(|i| Ok::<_, std::io::Error>(format!("part{i};"))));
    let resp = h2
        .post(host.url("/v1/connectors/api/h2"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["body"], "part0;part1;part2;part3;");
}

#[tokio::test]
async fn sized_responses_at_and_over_the_limit() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(bearer(&up), admin_everything()));
    let limit = 50 * 1024 * 1024;
    let resp = client()
        .get(host.url(&format!("/v1/connectors/api/__sized/{limit}")))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.content_length(), Some(limit as u64));
    assert_eq!(resp.bytes().await.expect("body").len(), limit);
    let resp = client()
        .get(host.url(&format!("/v1/connectors/api/__sized/{}", limit + 4096)))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.content_length().is_none_or(|n| n == limit as u64),
        "{:?}",
        resp.content_length()
    );
    assert_eq!(resp.bytes().await.expect("body").len(), limit);
}
