//! The config admin API, the secrets API, provider templates and connector health, as
//! an operator meets them: through the running host, with an admin (alice, 127.0.0.2)
//! and a non-admin (bob, 127.0.0.3) told apart by a whois stand-in.

use portcullis_e2e::mcp_server::{Expect, McpServer};
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::whois::Whois;
use portcullis_e2e::{Host, HostOptions, client_from, grant, refused_port, registry_copy};
use reqwest::Method;
use serde_json::{Value, json};

const ALICE: &str = "127.0.0.2";
const BOB: &str = "127.0.0.3";

/// The operator's file: comments, an inline secret, alice admin, bob a user.
fn operator_file(socket: &std::path::Path, up: &Upstream) -> String {
    format!(
        r#"// Portcullis for the platform team. Keep this comment.
{{
  "identity": {{"mode": "tailscale", "socket": {socket}, "cache_ttl_secs": 0}},
  "egress": {{"allow_loopback": true}}, // tests talk to loopback upstreams
  "connectors": {{"servers": {{
    /* the echo API */
    "api": {{"protocol": "http", "url": "{url}",
             "auth": {{"type": "bearer_token", "secret": "ghp_inline_original"}}}},
  }}}},
  "grants": [
    {{"src": ["alice@example.com"], "app": {{"tailscale.com/cap/aperture": [{{"role": "admin"}}, {{"connectors": ["**"]}}]}}}},
    {{"src": ["bob@example.com"], "app": {{"tailscale.com/cap/aperture": [{{"connectors": ["api/**"]}}]}}}}, // bob uses it
  ],
}}
"#,
        socket = json!(socket),
        url = up.url(),
    )
}

/// A host with the operator's file, and the whois stand-in that names its callers.
async fn operator_host(up: &Upstream, env: Vec<(String, String)>) -> (Whois, Host) {
    let whois = Whois::start().await;
    whois.user(ALICE, "alice@example.com", &[], json!({}));
    whois.user(BOB, "bob@example.com", &[], json!({}));
    let host = Host::start_with(
        &operator_file(&whois.socket, up),
        HostOptions {
            env,
            ..Default::default()
        },
    );
    (whois, host)
}

/// Requests to a host from one caller; each answers its status and JSON body.
struct As<'a> {
    host: &'a Host,
    from: &'static str,
}

impl As<'_> {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = client_from(self.from).request(method, self.host.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::PUT, path, Some(body)).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(Method::DELETE, path, None).await
    }

    /// The config's hash and masked content.
    async fn config(&self) -> (String, Value) {
        let (status, body) = self.get("/api/config").await;
        assert_eq!(status, 200, "{body}");
        (
            body["hash"].as_str().expect("hash").to_owned(),
            body["config"].clone(),
        )
    }

    /// What the echo upstream saw as `Authorization` for a request through `connector`.
    async fn bearer_seen(&self, connector: &str) -> String {
        let (status, body) = self.get(&format!("/v1/connectors/{connector}/x")).await;
        assert_eq!(status, 200, "{body}");
        body["headers"]["authorization"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The caller's connector list.
    async fn connectors(&self) -> Vec<Value> {
        let (status, list) = self.get("/api/connectors").await;
        assert_eq!(status, 200, "{list}");
        list["connectors"].as_array().expect("list").clone()
    }
}

/// `(status, error code)` of an answer.
fn refusal(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

/// Files under `dir` that hold `needle` in plaintext (the vault, the key, the config).
fn on_disk(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn the_config_is_read_masked_and_saved_against_its_hash_keeping_comments() {
    let up = Upstream::start().await;
    let (_whois, host) = operator_host(&up, vec![]).await;
    let (alice, bob) = (
        As {
            host: &host,
            from: ALICE,
        },
        As {
            host: &host,
            from: BOB,
        },
    );

    // Bob may use the connector but not read or change the config or the secrets.
    for (method, path) in [
        (Method::GET, "/api/config"),
        (Method::PUT, "/api/config"),
        (Method::POST, "/api/config:validate"),
        (Method::POST, "/api/config/connectors"),
        (Method::PUT, "/api/config/connectors/x"),
        (Method::DELETE, "/api/config/connectors/api"),
        (Method::GET, "/api/secrets"),
        (Method::PUT, "/api/secrets/x"),
        (Method::DELETE, "/api/secrets/x"),
    ] {
        let answer = bob.send(method.clone(), path, Some(json!({}))).await;
        assert_eq!(refusal(&answer), (403, "forbidden"), "{method} {path}");
        let message = answer.1["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("bob@example.com is not an admin"),
            "{message}"
        );
    }

    let (hash, config) = alice.config().await;
    assert_eq!(
        config["connectors"]["servers"]["api"]["auth"]["secret"],
        "********"
    );
    assert!(!config.to_string().contains("ghp_inline_original"));
    assert_eq!(alice.bearer_seen("api").await, "Bearer ghp_inline_original");

    // A stale hash is refused, with the current one to retry with.
    let mut edited = config.clone();
    edited["connectors"]["servers"]["weather"] = json!({"protocol": "http", "url": up.url(),
        "auth": {"type": "api_key", "name": "X-Key", "in": "header", "secret": "wx_new_key_123"}});
    let stale = alice
        .put(
            "/api/config",
            json!({"hash": "0".repeat(64), "config": edited}),
        )
        .await;
    assert_eq!(refusal(&stale), (409, "stale_config"));
    assert_eq!(stale.1["error"]["hash"], hash.as_str());

    // No hash at all is a clear 400, and so are a body that is not JSON and one with
    // duplicate keys.
    let no_hash = alice.put("/api/config", json!({"config": {}})).await;
    assert_eq!(refusal(&no_hash), (400, "bad_request"));
    let raw = |content_type: &'static str, body: &'static str| {
        client_from(ALICE)
            .post(host.url("/api/config/connectors"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let not_json = raw("application/json", "not json").await.expect("request");
    assert_eq!(not_json.status(), 400);
    let twice = raw("application/json", r#"{"provider": "a", "provider": "b"}"#)
        .await
        .expect("request");
    assert_eq!(twice.status(), 400);
    assert!(twice.text().await.expect("body").contains("duplicate"));
    // What a page on another site can send without asking (a form, text/plain) is
    // refused before anything is read.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let cross = raw(content_type, r#"{"provider": "slack"}"#)
            .await
            .expect("request");
        assert_eq!(cross.status(), 415, "{content_type}");
    }

    // The save: the masked secret stays what it was; inline secrets move to the vault.
    let (status, saved) = alice
        .put("/api/config", json!({"hash": hash, "config": edited}))
        .await;
    assert_eq!(status, 200, "{saved}");
    let new_hash = saved["hash"].as_str().expect("hash");
    assert_ne!(new_hash, hash);
    assert_eq!(saved["secrets"], json!(["api_secret", "weather_secret"]));

    let file = std::fs::read_to_string(&host.config_path).expect("config");
    for kept in [
        "// Portcullis for the platform team. Keep this comment.",
        "// tests talk to loopback upstreams",
        "/* the echo API */",
        "// bob uses it",
    ] {
        assert!(file.contains(kept), "lost {kept:?}:\n{file}");
    }
    assert!(file.contains(r#""vault": "weather_secret""#), "{file}");
    assert!(file.contains(r#""vault": "api_secret""#), "{file}");
    assert!(
        !file.contains("wx_new_key_123") && !file.contains("ghp_inline_original"),
        "{file}"
    );
    // The previous version is kept, its secret a reference too.
    let prev = std::fs::read_to_string(host.config_path.with_file_name("portcullis.hujson.prev"))
        .expect("previous version kept");
    assert!(prev.contains("/* the echo API */"), "{prev}");
    assert!(prev.contains(r#""vault": "api_secret""#), "{prev}");
    assert!(!prev.contains("ghp_inline_original"), "{prev}");

    // In force at once, without a restart; the same secrets go out.
    assert_eq!(alice.bearer_seen("api").await, "Bearer ghp_inline_original");
    let (status, echo) = alice.get("/v1/connectors/weather/x").await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-key"], json!(["wx_new_key_123"]));
    assert_eq!(alice.config().await.0, new_hash);

    // Neither the data directory nor the logs hold a secret in plaintext.
    for secret in ["wx_new_key_123", "ghp_inline_original"] {
        assert!(
            on_disk(&host.data_dir(), secret).is_empty(),
            "{secret} on disk"
        );
        assert!(!host.logs().contains(secret), "{secret} logged");
    }
}

#[tokio::test]
async fn invalid_configs_are_refused_with_every_problem_and_validate_says_the_same() {
    let up = Upstream::start().await;
    let (_whois, host) = operator_host(&up, vec![]).await;
    let alice = As {
        host: &host,
        from: ALICE,
    };
    let (hash, config) = alice.config().await;
    let before = std::fs::read_to_string(&host.config_path).expect("config");

    let mut bad = config.clone();
    bad["connectors"]["servers"]["two"] = json!({"protocol": "http", "url": "ftp://x.example.com"});
    bad["connectors"]["servers"]["three"] = json!({"protocol": "http", "url": up.url(),
        "auth": {"type": "bearer_token", "secret": {"env": "PORTCULLIS_TEST_NEVER_SET"}}});
    bad["egress"]["read_timeout_secs"] = json!(0);
    bad["unknwn"] = json!(1); // a warning: it fails a save too

    let refused = alice
        .put("/api/config", json!({"hash": hash, "config": bad.clone()}))
        .await;
    assert_eq!(refusal(&refused), (422, "invalid_config"), "{}", refused.1);
    let diagnostics = &refused.1["error"]["diagnostics"];
    let paths: Vec<&str> = diagnostics
        .as_array()
        .expect("diagnostics")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    for want in [
        "connectors.servers.two.url",
        "connectors.servers.three.auth.secret",
        "egress.read_timeout_secs",
        "unknwn",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    assert_eq!(
        std::fs::read_to_string(&host.config_path).expect("config"),
        before,
        "a refused save leaves the file alone"
    );

    let (status, checked) = alice
        .post("/api/config:validate", json!({"config": bad}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(checked["valid"], false);
    assert_eq!(&checked["diagnostics"], diagnostics);
    let (_, ok) = alice
        .post("/api/config:validate", json!({"config": config}))
        .await;
    assert_eq!(ok["valid"], true, "{ok}");
    // Only notices (what egress.allow_loopback does) remain.
    for d in ok["diagnostics"].as_array().expect("diagnostics") {
        assert_eq!(d["severity"], "notice", "{ok}");
    }
}

#[tokio::test]
async fn a_save_that_would_lock_the_saver_out_is_refused() {
    let up = Upstream::start().await;
    let (_whois, host) = operator_host(&up, vec![]).await;
    let alice = As {
        host: &host,
        from: ALICE,
    };
    let (hash, mut config) = alice.config().await;
    // Alice keeps her connectors but loses the admin role; bob gains it.
    config["grants"] = json!([
        grant("alice@example.com", &["**"], false),
        grant("bob@example.com", &["**"], true),
    ]);
    let refused = alice
        .put("/api/config", json!({"hash": hash, "config": config}))
        .await;
    assert_eq!(refusal(&refused), (403, "admin_lockout"));
    assert!(
        refused.1.to_string().contains("alice@example.com"),
        "{}",
        refused.1
    );
    assert_eq!(alice.config().await.0, hash, "nothing was saved");
}

#[tokio::test]
async fn edits_of_different_connectors_at_once_are_both_kept() {
    let up = Upstream::start().await;
    let (_whois, host) = operator_host(&up, vec![]).await;
    let alice = As {
        host: &host,
        from: ALICE,
    };
    let put = |id: &'static str| {
        let server = json!({"protocol": "http", "url": up.url(), "description": id});
        let path = format!("/api/config/connectors/{id}");
        let alice = &alice;
        async move { alice.put(&path, server).await.0 }
    };
    let (a, b, c) = tokio::join!(put("one"), put("two"), put("three"));
    assert_eq!((a, b, c), (201, 201, 201));
    let (_, config) = alice.config().await;
    let servers = config["connectors"]["servers"]
        .as_object()
        .expect("servers");
    for id in ["api", "one", "two", "three"] {
        assert!(servers.contains_key(id), "{id} lost: {config}");
    }
    assert!(
        std::fs::read_to_string(&host.config_path)
            .expect("config")
            .contains("// Portcullis for the platform team. Keep this comment.")
    );

    // One connector's version: a change made against an old one is refused.
    let got = client_from(ALICE)
        .get(host.url("/api/config/connectors/one"))
        .send()
        .await
        .expect("request");
    let etag = got.headers()["etag"].to_str().expect("etag").to_owned();
    let one: Value = got.json().await.expect("JSON");
    assert_eq!(one["server"]["description"], "one");
    let replace = |tag: String, description: &'static str| {
        client_from(ALICE)
            .put(host.url("/api/config/connectors/one"))
            .header("if-match", tag)
            .json(&json!({"protocol": "http", "url": up.url(), "description": description}))
            .send()
    };
    let first = replace(etag.clone(), "first").await.expect("put");
    assert_eq!(first.status(), 200);
    let second = replace(etag, "second").await.expect("put");
    assert_eq!(second.status(), 412);
    let body: Value = second.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "stale_connector");

    // Removal; then it is gone from the config and the caller's list.
    assert_eq!(alice.delete("/api/config/connectors/two").await.0, 200);
    let again = alice.delete("/api/config/connectors/two").await;
    assert_eq!(refusal(&again), (404, "not_found"));
    let missing = alice.get("/api/config/connectors/two").await;
    assert_eq!(refusal(&missing), (404, "not_found"));
    let ids: Vec<String> = alice
        .connectors()
        .await
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, ["api", "one", "three"]);
}

#[tokio::test]
async fn secrets_are_write_only_and_a_rotation_applies_without_a_restart() {
    let up = Upstream::start().await;
    let (_whois, host) = operator_host(&up, vec![]).await;
    let alice = As {
        host: &host,
        from: ALICE,
    };

    // A connector naming a secret the vault lacks is refused, naming the fix.
    let server = json!({"protocol": "http", "url": up.url(),
        "auth": {"type": "bearer_token", "secret": {"vault": "gh_pat"}}});
    let refused = alice.put("/api/config/connectors/gh", server.clone()).await;
    assert_eq!(refusal(&refused), (422, "invalid_config"));
    assert!(
        refused.1.to_string().contains("PUT /api/secrets/gh_pat"),
        "{}",
        refused.1
    );

    let (status, set) = alice
        .put("/api/secrets/gh_pat", json!({"value": "pat_value_one"}))
        .await;
    assert_eq!(status, 200, "{set}");
    assert!(!set.to_string().contains("pat_value_one"));
    assert_eq!(alice.put("/api/config/connectors/gh", server).await.0, 201);
    assert_eq!(alice.bearer_seen("gh").await, "Bearer pat_value_one");

    // Rotation: the next request carries the new value.
    let (status, set) = alice
        .put("/api/secrets/gh_pat", json!({"value": "pat_value_two"}))
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["applied"], true);
    assert_eq!(alice.bearer_seen("gh").await, "Bearer pat_value_two");

    let (status, list) = alice.get("/api/secrets").await;
    assert_eq!(status, 200);
    let entry = list["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .find(|s| s["name"] == "gh_pat")
        .expect("listed")
        .clone();
    assert!(entry["set_at"].as_u64().is_some(), "{entry}");
    assert_eq!(
        entry["used_by"],
        json!(["connectors.servers.gh.auth.secret"])
    );
    assert!(!list.to_string().contains("pat_value"), "{list}");

    // In use: not removable until nothing refers to it.
    let in_use = alice.delete("/api/secrets/gh_pat").await;
    assert_eq!(refusal(&in_use), (409, "secret_in_use"));
    assert_eq!(alice.delete("/api/config/connectors/gh").await.0, 200);
    assert_eq!(alice.delete("/api/secrets/gh_pat").await.0, 200);
    let gone = alice.delete("/api/secrets/gh_pat").await;
    assert_eq!(refusal(&gone), (404, "not_found"));

    // Bad names and bodies are refused without echoing anything.
    let bad_name = alice.put("/api/secrets/a%20b", json!({"value": "v"})).await;
    assert_eq!(refusal(&bad_name), (400, "bad_request"));
    let bad_body = alice
        .put("/api/secrets/ok", json!({"valu": "leaky_value"}))
        .await;
    assert_eq!(refusal(&bad_body), (400, "bad_request"));
    assert!(!bad_body.1.to_string().contains("leaky_value"));

    for secret in ["pat_value_one", "pat_value_two"] {
        assert!(
            on_disk(&host.data_dir(), secret).is_empty(),
            "{secret} on disk"
        );
        assert!(!host.logs().contains(secret), "{secret} logged");
    }
}

#[tokio::test]
async fn every_verified_provider_has_a_template_that_saves_once_a_client_is_set() {
    let up = Upstream::start().await;
    let reg = registry_copy(&["salesforce", "atlassian", "slack", "google"]);
    let env = vec![(
        "PORTCULLIS_REGISTRY".to_owned(),
        reg.path().display().to_string(),
    )];
    let (_whois, host) = operator_host(&up, env).await;
    let alice = As {
        host: &host,
        from: ALICE,
    };
    let (_, registry) = alice.get("/api/registry").await;
    let providers = registry["providers"].as_array().expect("providers");
    // Four providers, and Google's products as entries of their own.
    let ids: Vec<&str> = providers.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "atlassian",
            "google",
            "google/gmail",
            "google/drive",
            "google/calendar",
            "google/sheets",
            "salesforce",
            "slack"
        ],
        "{registry}"
    );

    for template in providers {
        let provider = template["id"].as_str().expect("id");
        // Without a client ID: refused, naming the field.
        let refused = alice
            .post("/api/config/connectors", json!({"provider": provider}))
            .await;
        assert_eq!(refusal(&refused), (422, "invalid_config"), "{provider}");
        assert!(refused.1.to_string().contains("client_id"), "{}", refused.1);

        let (status, body) = alice
            .post(
                "/api/config/connectors",
                json!({"provider": provider, "client_id": "cid-123", "client_secret": "cs_template_secret"}),
            )
            .await;
        assert_eq!(status, 201, "{provider}: {body}");
        let id = body["id"].as_str().expect("id");
        assert_eq!(id, template["connector"]["id"]);
        // An entry's connector names its provider and takes the entry's URL.
        let named = template.get("provider").unwrap_or(&template["id"]);
        assert_eq!(&body["server"]["provider"], named, "{provider}: {body}");
        assert_eq!(body["server"]["url"], template["url"], "{provider}");
        let auth = &body["server"]["auth"];
        assert_eq!(
            auth["client_secret"],
            json!({"vault": format!("{id}_client_secret")})
        );
        for field in ["authorization_url", "token_url", "scopes", "auth_params"] {
            assert_eq!(auth[field], template["oauth"][field], "{provider} {field}");
        }
        assert!(
            body["redirect_uri"]
                .as_str()
                .is_some_and(|u| u.ends_with(&format!("/aperture/auth/{id}/callback"))),
            "{body}"
        );
        // Adding it twice is a conflict.
        let again = alice
            .post(
                "/api/config/connectors",
                json!({"provider": provider, "client_id": "cid-123"}),
            )
            .await;
        assert_eq!(refusal(&again), (409, "connector_exists"));
    }
    let unknown = alice
        .post(
            "/api/config/connectors",
            json!({"provider": "slak", "client_id": "c"}),
        )
        .await;
    assert_eq!(refusal(&unknown), (422, "unknown_provider"));
    let no_entry = alice
        .post(
            "/api/config/connectors",
            json!({"provider": "google/photos", "client_id": "c"}),
        )
        .await;
    assert_eq!(refusal(&no_entry), (422, "unknown_provider"));
    assert!(
        no_entry.1.to_string().contains("google/gmail"),
        "names the entries there are: {}",
        no_entry.1
    );

    // Every one is ready to connect, its provider loaded.
    let per_user: Vec<Value> = alice
        .connectors()
        .await
        .into_iter()
        .filter(|c| c["per_user"] == true)
        .collect();
    assert_eq!(per_user.len(), 8, "{per_user:?}");
    for c in per_user {
        assert_eq!(c["status"], "Needs auth", "{c}");
        assert_eq!(c["health"]["checks"]["provider"]["ok"], true, "{c}");
    }
    assert!(on_disk(&host.data_dir(), "cs_template_secret").is_empty());
}

#[tokio::test]
async fn connector_health_shows_a_dead_mcp_upstream_and_a_live_one_with_its_tools() {
    let whois = Whois::start().await;
    whois.user(ALICE, "alice@example.com", &[], json!({}));
    let live = McpServer::start(Expect::Nothing).await;
    let dead = refused_port();
    let config = json!({
        "identity": {"mode": "tailscale", "socket": whois.socket, "cache_ttl_secs": 0},
        "egress": {"allow_loopback": true, "connect_timeout_secs": 2},
        "mcp": {"poll_interval_secs": 1},
        "connectors": {"servers": {
            "live": {"protocol": "mcp", "url": live.url()},
            "dead": {"protocol": "mcp", "url": format!("http://127.0.0.1:{}/mcp", dead.port)},
        }},
        "grants": [grant("alice@example.com", &["**"], true)],
    })
    .to_string();
    let host = Host::start(&config);
    let alice = As {
        host: &host,
        from: ALICE,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (live, dead) = loop {
        let list = alice.connectors().await;
        let health = |id: &str| {
            list.iter()
                .find(|c| c["id"] == id)
                .map(|c| c["health"].clone())
                .unwrap_or(Value::Null)
        };
        let (l, d) = (health("live"), health("dead"));
        if l["state"] != "unknown" && d["state"] != "unknown" {
            break (l, d);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no health after 20 s: {list:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(live["state"], "ok", "{live}");
    assert!(
        live["checks"]["mcp"]["tools"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{live}"
    );
    assert_eq!(dead["state"], "failing", "{dead}");
    assert!(
        dead["checks"]["mcp"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{dead}"
    );
}

#[tokio::test]
async fn an_admin_from_the_tailnet_policy_file_can_save_a_config_without_an_admin_grant() {
    let whois = Whois::start().await;
    whois.user(
        ALICE,
        "alice@example.com",
        &[],
        json!({"tailscale.com/cap/aperture": [{"role": "admin"}]}),
    );
    whois.user(BOB, "bob@example.com", &[], json!({}));
    let up = Upstream::start().await;
    let config = json!({
        "identity": {"mode": "tailscale", "socket": whois.socket, "cache_ttl_secs": 0},
        "egress": {"allow_loopback": true},
        "grants": [grant("bob@example.com", &["**"], false)],
    })
    .to_string();
    let host = Host::start(&config);
    let alice = As {
        host: &host,
        from: ALICE,
    };
    let server = json!({"protocol": "http", "url": up.url()});
    let (status, body) = alice.put("/api/config/connectors/api", server).await;
    assert_eq!(status, 201, "{body}");
    // Bob, granted everything but admin, still may not.
    let bob = As {
        host: &host,
        from: BOB,
    };
    let refused = bob.delete("/api/config/connectors/api").await;
    assert_eq!(refusal(&refused), (403, "forbidden"));
}
