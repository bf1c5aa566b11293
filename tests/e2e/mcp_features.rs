//! MCP beyond tools and resources, through `/v1/mcp` and `/v1/mcp/<id>`: prompts,
//! completion, progress, resource links in results, and clients on MCP 2026-07-28. The
//! client is the official Python SDK (`mcp.Client`, with the `initialize` handshake and
//! with `server/discover`), the upstream server-everything; every call through the
//! gateway is compared with the same call made to the upstream directly.

use std::time::{Duration, Instant};

use portcullis_e2e::peers_mcp::{Everything, Sdk, python_agent, python_agent_as};
use portcullis_e2e::{Host, client, grant};
use serde_json::{Value, json};

use crate::loopback_config;

/// An agent's `results`.
fn results(output: Value) -> Vec<Value> {
    output["results"].as_array().cloned().expect("results")
}

/// How the endpoint under test names things: the aggregated endpoint prefixes names
/// with the connector ID, `/v1/mcp/<id>` and the upstream itself do not.
#[derive(Clone, Copy)]
enum Naming {
    /// By this connector ID.
    Prefixed(&'static str),
    Plain,
}

/// The server-everything connector on the aggregated endpoint.
const DEMO: Naming = Naming::Prefixed("demo");

impl Naming {
    fn name(self, n: &str) -> String {
        match self {
            Self::Prefixed(id) => format!("{id}_{n}"),
            Self::Plain => n.to_owned(),
        }
    }

    fn uri(self, u: &str) -> String {
        match self {
            Self::Prefixed(id) => format!("{id}-{u}"),
            Self::Plain => u.to_owned(),
        }
    }
}

/// The operations every endpoint is put through, named as `naming` says.
fn ops(naming: Naming) -> Value {
    json!([
        {"op": "protocol_version"},
        {"op": "call_tool", "name": naming.name("get-resource-links"), "arguments": {"count": 2}},
        {"op": "read_resource", "uri": naming.uri("demo://resource/dynamic/text/2")},
        {"op": "list_prompts"},
        {"op": "get_prompt", "name": naming.name("simple-prompt")},
        {"op": "get_prompt", "name": naming.name("resource-prompt"),
         "arguments": {"resourceType": "Text", "resourceId": "2"}},
        {"op": "complete_prompt", "name": naming.name("completable-prompt"),
         "argument": {"name": "department", "value": "E"}},
        {"op": "complete_prompt", "name": naming.name("completable-prompt"),
         "argument": {"name": "name", "value": "A"}, "context": {"department": "Engineering"}},
        {"op": "complete_template", "uri": naming.uri("demo://resource/dynamic/text/{resourceId}"),
         "argument": {"name": "resourceId", "value": "1"}},
        {"op": "call_tool", "name": naming.name("trigger-long-running-operation"),
         "arguments": {"duration": 1, "steps": 3}, "progress": true},
    ])
}

/// A message as the upstream would have given it: the connector prefix off every URI
/// and prompt name, the resources' creation times (they differ per read), the cache
/// hints (the SDK fills them in either way) and `_meta` (rmcp puts a progress token of
/// its own on every request it sends) left out, and numbers compared as rmcp's model
/// types hold them (a sampling `temperature` is an `f32` there, schema bounds `f64`).
fn comparable(mut v: Value, naming: Naming) -> Value {
    fn walk(v: &mut Value, naming: Naming) {
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    *v = json!(f64::from(f as f32));
                }
            }
            Value::Object(m) => {
                m.remove("ttlMs");
                m.remove("cacheScope");
                m.remove("resultType");
                m.remove("_meta");
                for (k, x) in m.iter_mut() {
                    match (k.as_str(), &mut *x, naming) {
                        ("uri" | "name", Value::String(s), Naming::Prefixed(id)) => {
                            if let Some(rest) = s
                                .strip_prefix(&format!("{id}-"))
                                .or_else(|| s.strip_prefix(&format!("{id}_")))
                            {
                                *s = rest.to_owned();
                            }
                        }
                        ("text", Value::String(s), _) => {
                            if let Some(at) = s.find(" created at ") {
                                s.truncate(at);
                            }
                        }
                        _ => walk(x, naming),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, naming)),
            _ => {}
        }
    }
    walk(&mut v, naming);
    v
}

/// Every result after the first (the protocol version) through the gateway is the direct
/// call's result, compared as [`comparable`] says. Progress is left to the caller: the
/// last notification may trail the answer (see the progress assertion).
fn same_as_direct(through: &[Value], direct: &[Value], naming: Naming, at: &str) {
    let without_progress = |mut v: Value| {
        if let Some(ok) = v["ok"].as_object_mut() {
            ok.remove("progress");
        }
        v
    };
    for (i, (t, d)) in through.iter().zip(direct).enumerate().skip(1) {
        assert!(t.get("ok").is_some(), "{at}: operation {i} failed: {t}");
        assert_eq!(
            comparable(without_progress(t.clone()), naming),
            comparable(without_progress(d.clone()), Naming::Plain),
            "{at}: operation {i} differs from the direct call"
        );
    }
}

fn setup(patterns: &[&str]) -> (Everything, Host) {
    let everything = Everything::start();
    let connectors = json!({
        "demo": {"protocol": "mcp", "url": everything.url(),
                 "auth": {"type": "bearer_token", "secret": "demo-token"}},
        "plain": {"protocol": "http", "url": "http://127.0.0.1:9"},
    });
    let mut grants = vec![grant("(loopback)", patterns, false)];
    grants.push(grant("(loopback)", &["plain/**"], false));
    let mut config: Value =
        serde_json::from_str(&loopback_config(connectors, json!(grants))).expect("config");
    config["mcp"] = json!({"poll_interval_secs": 600});
    let host = Host::start(&config.to_string());
    (everything, host)
}

/// Waits until the gateway has the upstream's catalog (discovery runs in the background).
async fn catalog_loaded(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = python_agent(&host.url("/v1/mcp"), json!([{"op": "list_prompts"}])).await;
        let listed = r[0]["ok"]["prompts"]
            .as_array()
            .is_some_and(|p| !p.is_empty());
        if listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never listed the upstream's prompts: {r:?}\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn prompts_completion_progress_and_resource_links_match_the_direct_calls_on_every_protocol_version()
 {
    let (everything, host) = setup(&["demo/**"]);
    catalog_loaded(&host).await;
    for sdk in Sdk::ALL {
        let direct = results(
            sdk.agent(&everything.url(), ops(Naming::Plain), "legacy")
                .await,
        );
        assert!(
            direct.iter().all(|r| r.get("ok").is_some()),
            "{sdk:?}: the upstream itself answers every operation: {direct:#?}"
        );
        for (path, naming, mode, version) in [
            ("/v1/mcp", DEMO, "legacy", "2025-11-25"),
            ("/v1/mcp", DEMO, "auto", "2026-07-28"),
            ("/v1/mcp/demo", Naming::Plain, "legacy", "2025-11-25"),
            ("/v1/mcp/demo", Naming::Plain, "auto", "2026-07-28"),
        ] {
            if mode == "auto" && !sdk.modern() {
                continue;
            }
            let through = results(sdk.agent(&host.url(path), ops(naming), mode).await);
            let at = format!("{sdk:?} SDK on {path} with {mode} negotiation");
            assert_eq!(through[0]["ok"]["version"], version, "{at}");
            same_as_direct(&through, &direct, naming, &at);
            // What the comparison cannot show: the names themselves.
            let links: Vec<&str> = through[1]["ok"]["content"]
                .as_array()
                .expect("content")
                .iter()
                .filter_map(|c| c["uri"].as_str())
                .collect();
            assert_eq!(
                links,
                [
                    naming.uri("demo://resource/dynamic/blob/1"),
                    naming.uri("demo://resource/dynamic/text/2")
                ],
                "{at}: resource links are named as the client reads them back"
            );
            assert_eq!(
                through[5]["ok"]["messages"][1]["content"]["resource"]["uri"],
                naming.uri("demo://resource/dynamic/text/2"),
                "{at}: an embedded resource in a prompt"
            );
            let prompts: Vec<&str> = through[3]["ok"]["prompts"]
                .as_array()
                .expect("prompts")
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert!(
                prompts.contains(&naming.name("completable-prompt").as_str()),
                "{at}: {prompts:?}"
            );
            assert_eq!(
                through[6]["ok"]["completion"]["values"],
                json!(["Engineering"]),
                "{at}"
            );
            assert_eq!(
                through[7]["ok"]["completion"]["values"],
                json!(["Alice"]),
                "{at}"
            );
            // Progress reaches the client under its own token, in order. rmcp passes each
            // upstream notification on in a task of its own and the answer directly, so
            // the gateway cannot wait for the last notification before answering: on a
            // busy machine it may come after the answer, and the client drops it.
            let progress = through[9]["ok"]["progress"].as_array().expect("progress");
            assert!(progress.len() >= 2, "{at}: {progress:?}");
            for (k, p) in progress.iter().enumerate() {
                assert_eq!(
                    comparable(p.clone(), Naming::Plain),
                    comparable(json!([k + 1, 3, null]), Naming::Plain),
                    "{at}: {progress:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn prompt_grants_decide_listing_getting_and_completing() {
    let (_everything, host) = setup(&[
        "demo/tools/*",
        "demo/resources/*",
        "demo/templates/*",
        "demo/prompts/simple-prompt",
    ]);
    catalog_loaded(&host).await;
    for path in ["/v1/mcp", "/v1/mcp/demo"] {
        let naming = if path == "/v1/mcp" {
            DEMO
        } else {
            Naming::Plain
        };
        let r = python_agent(
            &host.url(path),
            json!([
                {"op": "list_prompts"},
                {"op": "get_prompt", "name": naming.name("simple-prompt")},
                {"op": "get_prompt", "name": naming.name("args-prompt"), "arguments": {"city": "Oslo"}},
                {"op": "complete_prompt", "name": naming.name("completable-prompt"),
                 "argument": {"name": "department", "value": "E"}},
            ]),
        )
        .await;
        let prompts: Vec<&str> = r[0]["ok"]["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(prompts, [naming.name("simple-prompt")], "{path}");
        assert!(r[1].get("ok").is_some(), "{path}: {}", r[1]);
        for refused in &r[2..] {
            assert!(
                refused["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not available")),
                "{path}: an ungranted prompt is refused as if it did not exist: {refused}"
            );
        }
    }
}

#[tokio::test]
async fn one_connector_endpoint_refuses_what_it_does_not_serve_in_json() {
    let (_everything, host) = setup(&["demo/tools/*"]);
    let http = client();
    let post = |path: &str| {
        http.post(host.url(path))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc": "2.0", "method": "tools/list", "id": 1}"#)
    };
    for (path, status, code, says) in [
        (
            "/v1/mcp/nosuch",
            404,
            "not_found",
            "no connector \"nosuch\"",
        ),
        ("/v1/mcp/plain", 404, "not_found", "/v1/connectors/plain/"),
    ] {
        let resp = post(path).send().await.expect("post");
        assert_eq!(resp.status(), status, "{path}");
        let body: Value = resp.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], code, "{path}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{path}: {body}"
        );
    }

    // A connector the caller has no grant on at all.
    let (_other, denied) = setup(&["plain/**"]);
    let resp = client()
        .post(denied.url("/v1/mcp/demo"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc": "2.0", "method": "tools/list", "id": 1}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "forbidden");

    // A session belongs to the endpoint that opened it: the aggregated endpoint names
    // things another way, so it does not know the session.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "0"}}});
    let resp = http
        .post(host.url("/v1/mcp/demo"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .expect("initialize");
    assert_eq!(resp.status(), 200);
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    let resp = post("/v1/mcp")
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 404, "another endpoint's session is unknown");
    let resp = http
        .delete(host.url("/v1/mcp/demo"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("delete");
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// What the Python agent offers the server: every client capability, with answers that
/// name `who`, so each client can recognise its own.
fn offer(who: &str) -> Value {
    json!({
        "elicitation": {"action": "accept", "content": {"name": who, "check": true}},
        "sampling": {"text": format!("sampled for {who}")},
        "roots": [{"uri": "file:///work", "name": "work"}],
    })
}

fn server_request_ops(naming: Naming) -> Value {
    json!([
        {"op": "call_tool", "name": naming.name("trigger-elicitation-request"), "arguments": {}},
        {"op": "call_tool", "name": naming.name("trigger-sampling-request"), "arguments": {"prompt": "hi"}},
        {"op": "call_tool", "name": naming.name("trigger-url-elicitation"), "arguments": {
            "url": "https://example.com/consent", "message": "Open this to consent",
            "elicitationId": "consent-1"}},
        {"op": "call_tool", "name": naming.name("get-roots-list"), "arguments": {}},
    ])
}

/// Runs `sdk`'s agent with `client` (what it offers) and `ops`; returns its results and
/// the requests the server made of it, but for `roots/list` (asked when a session opens,
/// by no call: see the test).
async fn agent_offering(
    sdk: Sdk,
    url: &str,
    client: Value,
    ops: Value,
    mode: &str,
) -> (Vec<Value>, Vec<Value>) {
    let out = sdk
        .agent(url, json!({"client": client, "ops": ops}), mode)
        .await;
    let asked = out["asked"]
        .as_array()
        .expect("asked")
        .iter()
        .filter(|a| a["method"] != "roots/list")
        .cloned()
        .map(|mut a| {
            // A form elicitation may leave out `mode` (form is the default); rmcp's model
            // type always writes it.
            if a["method"] == "elicitation/create" && a["params"].get("mode").is_none() {
                a["params"]["mode"] = json!("form");
            }
            a
        })
        .collect();
    (results(out), asked)
}

fn text(result: &Value) -> String {
    result["ok"]["content"]
        .as_array()
        .map(|c| c.iter().filter_map(|b| b["text"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn elicitation_and_sampling_reach_the_client_whose_call_caused_them() {
    let (everything, host) = setup(&["demo/**"]);
    catalog_loaded(&host).await;
    let gateway = host.url("/v1/mcp");
    for sdk in Sdk::ALL {
        let (direct, direct_asked) = agent_offering(
            sdk,
            &everything.url(),
            offer("Ada"),
            server_request_ops(Naming::Plain),
            "legacy",
        )
        .await;
        let (through, asked) = agent_offering(
            sdk,
            &gateway,
            offer("Ada"),
            server_request_ops(DEMO),
            "legacy",
        )
        .await;
        // Elicitation in form and URL mode and sampling: the same requests reach the
        // client as straight from the upstream, and its answers make the same results.
        for i in 0..3 {
            assert!(
                through[i].get("ok").is_some(),
                "{sdk:?}: operation {i}: {}",
                through[i]
            );
            assert_eq!(
                comparable(through[i].clone(), DEMO),
                comparable(direct[i].clone(), Naming::Plain),
                "{sdk:?}: operation {i} differs from the direct call"
            );
        }
        assert_eq!(
            comparable(json!(asked), Naming::Plain),
            comparable(json!(direct_asked), Naming::Plain),
            "{sdk:?}: the client is asked what the upstream asks"
        );
        assert!(text(&through[0]).contains("- Name: Ada"), "{}", through[0]);
        assert!(
            text(&through[1]).contains("sampled for Ada"),
            "{}",
            through[1]
        );
        assert!(
            text(&through[2]).contains("Elicitation ID: consent-1"),
            "{}",
            through[2]
        );
        // Roots: the upstream asks for them once, when the gateway's session opens; no
        // call caused that request, so no client is asked and the upstream hears "no
        // roots".
        assert!(text(&direct[3]).contains("file:///work"), "{}", direct[3]);
        assert!(
            text(&through[3]).contains("no roots are currently configured"),
            "{}",
            through[3]
        );
    }

    // Two clients, one on each SDK, call through the one shared upstream session at
    // once: each is asked about its own calls only.
    let one = server_request_ops(DEMO)[0].clone();
    let (a, b) = tokio::join!(
        agent_offering(
            Sdk::Python,
            &gateway,
            offer("Ada"),
            json!([one.clone(), one.clone()]),
            "legacy"
        ),
        agent_offering(
            Sdk::TypeScript,
            &gateway,
            offer("Bob"),
            json!([one.clone(), one]),
            "legacy"
        ),
    );
    for r in &a.0 {
        assert!(text(r).contains("- Name: Ada"), "{r}");
    }
    for r in &b.0 {
        assert!(text(r).contains("- Name: Bob"), "{r}");
    }
    assert_eq!((a.1.len(), b.1.len()), (2, 2), "each client asked twice");

    // A client that declared nothing is never asked: the elicitation is declined on its
    // behalf and sampling refused, as a client without them would answer.
    let (plain, asked) = agent_offering(
        Sdk::Python,
        &gateway,
        json!({}),
        server_request_ops(DEMO),
        "legacy",
    )
    .await;
    assert!(asked.is_empty(), "{asked:?}");
    assert!(
        text(&plain[0]).contains("\"action\": \"decline\""),
        "{}",
        plain[0]
    );
    let refused = format!("{}", plain[1]);
    assert!(refused.contains("sampling is not available"), "{refused}");

    // MCP 2026-07-28 has no sessions, so the gateway cannot send a request to the client:
    // the upstream's question comes back in an InputRequiredResult, the client answers
    // it with its next round (the SDKs drive the rounds), and the parked upstream call
    // goes on. The client is asked what it would be asked directly, and the results are
    // the same.
    for sdk in Sdk::ALL.into_iter().filter(|s| s.modern()) {
        let (direct, direct_asked) = agent_offering(
            sdk,
            &everything.url(),
            offer("Ada"),
            server_request_ops(Naming::Plain),
            "auto",
        )
        .await;
        let (modern, asked) = agent_offering(
            sdk,
            &host.url("/v1/mcp/demo"),
            offer("Ada"),
            server_request_ops(Naming::Plain),
            "auto",
        )
        .await;
        for i in 0..3 {
            assert_eq!(
                comparable(modern[i].clone(), Naming::Plain),
                comparable(direct[i].clone(), Naming::Plain),
                "{sdk:?} on 2026-07-28: operation {i} differs from the direct call"
            );
        }
        assert!(text(&modern[0]).contains("- Name: Ada"), "{}", modern[0]);
        assert!(
            text(&modern[1]).contains("sampled for Ada"),
            "{}",
            modern[1]
        );
        // 2026-07-28 has no `elicitationId` (it went with `notifications/elicitation/complete`):
        // the TypeScript SDK drops it from what reaches the handler in rounds.
        let without_id = |asked: Vec<Value>| -> Value {
            let mut asked = json!(asked);
            for a in asked.as_array_mut().into_iter().flatten() {
                if let Some(p) = a["params"].as_object_mut() {
                    p.remove("elicitationId");
                }
            }
            comparable(asked, Naming::Plain)
        };
        assert_eq!(
            without_id(asked),
            without_id(direct_asked),
            "{sdk:?} on 2026-07-28: the client is asked what the upstream asks"
        );
    }

    // A 2026-07-28 client that declared nothing is not asked: declined on its behalf.
    let (plain, asked) = agent_offering(
        Sdk::Python,
        &gateway,
        json!({}),
        json!([server_request_ops(DEMO)[0].clone()]),
        "auto",
    )
    .await;
    assert!(asked.is_empty(), "{asked:?}");
    assert!(
        text(&plain[0]).contains("\"action\": \"decline\""),
        "{}",
        plain[0]
    );
}

/// A 2026-07-28 client's rounds are its own: a `requestState` the gateway handed out
/// resumes the parked call only for the caller it was given to and the tool it was
/// given for; an unknown one is refused, and one that is not the gateway's goes on to
/// the upstream (whose own it would be).
#[tokio::test]
async fn a_request_state_resumes_only_its_own_callers_call() {
    let (_everything, host) = setup(&["demo/**"]);
    catalog_loaded(&host).await;
    let url = host.url("/v1/mcp/demo");
    let call = |id: u32, name: &str, extra: Value| {
        let mut params = json!({"name": name, "arguments": {},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                      "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}});
        if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
    };
    let post = |from: &'static str, body: Value| {
        let url = url.clone();
        async move {
            let r = portcullis_e2e::client_from(from)
                .post(&url)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                // 2026-07-28 repeats the method and the name in headers.
                .header("mcp-method", "tools/call")
                .header(
                    "mcp-name",
                    body["params"]["name"].as_str().unwrap_or_default(),
                )
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
            let text = r.text().await.expect("body");
            // A JSON answer, or the last `data:` line of an event stream.
            let data = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .map(str::to_owned)
                .unwrap_or(text);
            serde_json::from_str::<Value>(&data).expect("JSON-RPC answer")
        }
    };
    let first = post(
        "127.0.0.1",
        call(1, "trigger-elicitation-request", json!({})),
    )
    .await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let state = result["requestState"].as_str().expect("state").to_owned();
    let (key, asked) = result["inputRequests"]
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("one input request");
    assert_eq!(asked["method"], "elicitation/create", "{asked}");

    let answer = json!({"requestState": state,
        "inputResponses": {key.clone(): {"action": "accept", "content": {"name": "Eve", "check": true}}}});
    // Another tool of the same caller: refused, and the call stays parked.
    let other = post(
        "127.0.0.1",
        call(2, "trigger-sampling-request", answer.clone()),
    )
    .await;
    assert!(
        other["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("another request")),
        "{other}"
    );
    // A state the gateway never gave out is refused. (That a state resumes only the
    // caller it was given to is checked by the unit tests of `mcp::rounds`: loopback
    // identity makes every local client the same caller.)
    let unknown = post(
        "127.0.0.1",
        call(
            3,
            "trigger-elicitation-request",
            json!({"requestState": "portcullis-mrtr.forged",
            "inputResponses": {}}),
        ),
    )
    .await;
    assert!(
        unknown["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown or expired")),
        "{unknown}"
    );
    // The right request resumes it, and the upstream gets the answer.
    let done = post(
        "127.0.0.1",
        call(4, "trigger-elicitation-request", answer.clone()),
    )
    .await;
    let text = done["result"]["content"].to_string();
    assert!(text.contains("Name: Eve"), "{done}");
    // Used once: the same state again is unknown.
    let again = post("127.0.0.1", call(5, "trigger-elicitation-request", answer)).await;
    assert!(
        again["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown or expired")),
        "{again}"
    );
}

#[tokio::test]
async fn resource_subscriptions_hear_updates_by_the_uri_the_client_subscribed_with() {
    let (_everything, host) = setup(&["demo/**"]);
    catalog_loaded(&host).await;
    for (sdk, path, naming) in [
        (Sdk::Python, "/v1/mcp", DEMO),
        (Sdk::TypeScript, "/v1/mcp/demo", Naming::Plain),
    ] {
        let uri = naming.uri("demo://resource/static/document/features.md");
        let r = results(sdk.agent(
            &host.url(path),
            json!([
                {"op": "subscribe", "uri": uri},
                // server-everything sends updates for its subscribed sessions once this
                // tool is on: at once, then every 5 s.
                {"op": "call_tool", "name": naming.name("toggle-subscriber-updates"), "arguments": {}},
                {"op": "wait_updated", "uri": uri, "timeout": 15},
                {"op": "unsubscribe", "uri": uri},
                {"op": "subscribe", "uri": naming.uri("demo://no/such/resource")},
                {"op": "call_tool", "name": naming.name("toggle-subscriber-updates"), "arguments": {}},
            ]),
            "legacy",
        )
        .await);
        assert!(r[0].get("ok").is_some(), "{sdk:?} on {path}: {}", r[0]);
        assert_eq!(
            r[2]["ok"]["updated"],
            json!([uri]),
            "{sdk:?} on {path}: {}",
            r[2]
        );
        assert!(r[3].get("ok").is_some(), "{sdk:?} on {path}: {}", r[3]);
        assert!(
            r[4]["error"]
                .as_str()
                .is_some_and(|e| e.contains("not available")),
            "{sdk:?} on {path}: a URI no grant covers cannot be subscribed to: {}",
            r[4]
        );
    }

    // Without a grant on the resource, no subscription.
    let (_other, host) = setup(&["demo/tools/*"]);
    catalog_loaded_tools(&host).await;
    let r = python_agent(
        &host.url("/v1/mcp"),
        json!([{"op": "subscribe", "uri": "demo-demo://resource/static/document/features.md"}]),
    )
    .await;
    assert!(
        r[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not available")),
        "{}",
        r[0]
    );
}

/// MCP 2026-07-28 has no `resources/subscribe`: a client names the resources in its
/// `subscriptions/listen` request and hears their updates on it, by the URI it named.
/// A resource it may not read is acknowledged (rmcp asks for the filter before the
/// caller is known) but never subscribed upstream.
#[tokio::test]
async fn a_2026_07_28_listen_hears_updates_of_the_resources_it_names() {
    use rmcp::model::{CallToolRequestParams, ServerNotification, SubscriptionFilter};
    let (_everything, host) = setup(&["demo/tools/**", "demo/resources/*"]);
    catalog_loaded_tools(&host).await;
    let agent = portcullis_e2e::mcp_agent_stateless(&host.url("/v1/mcp")).await;
    let uri = "demo-demo://resource/static/document/features.md";
    let mut sub = agent
        .peer()
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription(uri)
                .resource_subscription("demo-demo://no/such/resource")
                .build(),
        )
        .await
        .expect("subscriptions/listen is acknowledged");
    assert_eq!(
        sub.acknowledged()
            .resource_subscriptions
            .as_ref()
            .map(Vec::len),
        Some(2),
        "{:?}",
        sub.acknowledged()
    );
    // server-everything sends updates for its subscribed sessions once this tool is on:
    // at once, then every 5 s.
    let toggle = || CallToolRequestParams::new("demo_toggle-subscriber-updates");
    agent.call_tool(toggle()).await.expect("updates on");
    let deadline = Instant::now() + Duration::from_secs(15);
    let heard = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let note = tokio::time::timeout(left, sub.next())
            .await
            .expect("an update within 15 s")
            .expect("the subscription stays open");
        if let Some(ServerNotification::ResourceUpdatedNotification(n)) = note {
            break n.params.uri;
        }
    };
    assert_eq!(heard, uri, "heard by the URI it named");
    agent.call_tool(toggle()).await.expect("updates off");
}

/// Waits until the gateway lists the upstream's tools.
async fn catalog_loaded_tools(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = python_agent(&host.url("/v1/mcp"), json!([{"op": "list_tools"}])).await;
        if r[0]["ok"]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "demo_echo"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "no tools listed: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_shared_upstreams_log_messages_about_no_call_reach_no_client() {
    let (_everything, host) = setup(&["demo/**"]);
    catalog_loaded(&host).await;
    let gateway = host.url("/v1/mcp");
    // server-everything logs on its session's own stream, about no call, every 5 s (at
    // once, too) once this tool is on. The gateway's session with it is shared by every
    // caller, so none is passed on: it could be about anyone's call. (Log messages on a
    // call's own stream go to that call's client: see the Python SDK upstream's test.)
    let r = python_agent(
        &gateway,
        json!([
            {"op": "set_level", "level": "debug"},
            {"op": "call_tool", "name": "demo_toggle-simulated-logging", "arguments": {}},
            {"op": "wait_logs", "count": 1, "timeout": 7},
            {"op": "call_tool", "name": "demo_toggle-simulated-logging", "arguments": {}},
        ]),
    )
    .await;
    assert!(r[0].get("ok").is_some(), "the level is taken: {}", r[0]);
    assert_eq!(r[2]["ok"]["logs"], json!([]), "{}", r[2]);

    // Without a session there is no level to set.
    let modern = python_agent_as(
        &gateway,
        json!([{"op": "set_level", "level": "info"}]),
        "auto",
    )
    .await;
    assert!(modern[0].get("error").is_some(), "{}", modern[0]);
}

/// The operations for the Python upstreams (`tests/peers/mcp/server.py` and
/// `fastmcp_server.py`); `summarize` (sampling) only where the server has it.
fn python_server_ops(naming: Naming, sampling: bool) -> Value {
    let mut ops = json!([
        {"op": "protocol_version"},
        {"op": "call_tool", "name": naming.name("echo"), "arguments": {"text": "hi"}},
        {"op": "call_tool", "name": naming.name("count"), "arguments": {"steps": 3}, "progress": true},
        {"op": "call_tool", "name": naming.name("readme_link"), "arguments": {}},
        {"op": "read_resource", "uri": naming.uri("py://readme")},
        {"op": "read_resource", "uri": naming.uri("py://notes/7")},
        {"op": "get_prompt", "name": naming.name("greet"), "arguments": {"name": "Ada"}},
        {"op": "complete_prompt", "name": naming.name("greet"), "argument": {"name": "name", "value": "A"}},
        {"op": "call_tool", "name": naming.name("log_and_echo"), "arguments": {"text": "x"}},
        {"op": "call_tool", "name": naming.name("ask_name"), "arguments": {}},
        {"op": "wait_logs", "count": 1, "timeout": 2},
    ]);
    if sampling && let Some(list) = ops.as_array_mut() {
        list.push(json!({"op": "call_tool", "name": naming.name("summarize"), "arguments": {"text": "a long text"}}));
    }
    ops
}

#[tokio::test]
async fn python_sdk_and_fastmcp_upstreams_answer_every_client_sdk_as_they_do_directly() {
    use portcullis_e2e::peers_mcp::PythonServer;
    let (sdk_server, fastmcp) = (PythonServer::start(), PythonServer::fastmcp());
    let connectors = json!({
        "py": {"protocol": "mcp", "url": sdk_server.url()},
        "fm": {"protocol": "mcp", "url": fastmcp.url()},
    });
    let mut config: Value = serde_json::from_str(&loopback_config(
        connectors,
        json!([grant("(loopback)", &["py/**", "fm/**"], false)]),
    ))
    .expect("config");
    config["mcp"] = json!({"poll_interval_secs": 600});
    let host = Host::start(&config.to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = |r: &Value, name: &str| {
        r["ok"]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == name))
    };
    loop {
        let r = python_agent(&host.url("/v1/mcp"), json!([{"op": "list_tools"}])).await;
        if listed(&r[0], "py_echo") && listed(&r[0], "fm_echo") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never listed both: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two callers on the one shared upstream session at once: each hears the log
    // message about its own call, and not the other's.
    let logged = |who: &str| {
        json!([
            {"op": "call_tool", "name": "py_log_and_echo", "arguments": {"text": who}},
            {"op": "call_tool", "name": "py_log_and_echo", "arguments": {"text": who}},
            {"op": "wait_logs", "count": 3, "timeout": 2},
        ])
    };
    let gateway = host.url("/v1/mcp");
    let (a, b) = tokio::join!(
        python_agent(&gateway, logged("ada")),
        python_agent(&gateway, logged("bob")),
    );
    assert_eq!(
        a[2]["ok"]["logs"],
        json!([["info", "echoing ada"], ["info", "echoing ada"]])
    );
    assert_eq!(
        b[2]["ok"]["logs"],
        json!([["info", "echoing bob"], ["info", "echoing bob"]])
    );

    let client = json!({
        "elicitation": {"action": "accept", "content": {"name": "Ada"}},
        "sampling": {"text": "short"},
    });
    for (server, id, sampling) in [(&sdk_server, "py", true), (&fastmcp, "fm", false)] {
        for sdk in Sdk::ALL {
            let ops =
                |naming| json!({"client": client, "ops": python_server_ops(naming, sampling)});
            let direct = results(sdk.agent(&server.url(), ops(Naming::Plain), "legacy").await);
            assert!(
                direct.iter().all(|r| r.get("ok").is_some()),
                "{sdk:?} to {id}: the upstream itself answers every operation: {direct:#?}"
            );
            let one = format!("/v1/mcp/{id}");
            for (path, naming) in [
                ("/v1/mcp", Naming::Prefixed(id)),
                (one.as_str(), Naming::Plain),
            ] {
                let through = results(sdk.agent(&host.url(path), ops(naming), "legacy").await);
                let at = format!("{sdk:?} SDK on {path}");
                same_as_direct(&through, &direct, naming, &at);
                assert_eq!(
                    through[3]["ok"]["content"][0]["uri"],
                    naming.uri("py://readme"),
                    "{at}"
                );
                assert_eq!(text(&through[9]), "hello Ada", "{at}");
                assert!(
                    through[10]["ok"]["logs"]
                        .as_array()
                        .is_some_and(|l| l.len() == 1),
                    "{at}: the log message about the call reaches its client: {}",
                    through[10]
                );
                if sampling {
                    assert_eq!(text(&through[11]), "summary: short", "{at}");
                }
                assert!(
                    through[2]["ok"]["progress"]
                        .as_array()
                        .is_some_and(|p| p.len() >= 2),
                    "{at}: {}",
                    through[2]
                );
            }
        }
    }
}
