//! Provider plugins: golden fixtures through the real runtime, the registry (good and bad
//! entries, hot reload), the sandbox (misbehaving plugins fail only their own call),
//! and each verified provider end to end through the host against a fixture server.

use std::path::{Path, PathBuf};

use portcullis::plugins::harness::Harness;
use portcullis_e2e::fixture::{Canned, Fixture};
use portcullis_e2e::{
    Host, HostOptions, client, error_of, get_json, verified_providers, workspace,
};
use serde_json::{Value, json};

use crate::{admin_everything, loopback_config};

/// A built test plugin (`cargo xtask plugins` builds them).
fn test_plugin(name: &str) -> PathBuf {
    let p = workspace().join(format!(
        "plugins/target/wasm32-wasip2/release/portcullis_test_{name}.wasm"
    ));
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask plugins` first (the README's test command does)",
        p.display()
    );
    p
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Adds an entry `id` with this component and manifest text (a `[component]` section
/// for `plugin.wasm` is appended with `hash`, or the real hash when `None`).
fn add_entry(dir: &Path, id: &str, manifest: &str, wasm: &[u8], hash: Option<&str>) {
    let entry = dir.join(id);
    std::fs::create_dir_all(&entry).expect("entry dir");
    std::fs::write(entry.join("plugin.wasm"), wasm).expect("wasm");
    let hash = hash.map_or_else(|| sha256(wasm), str::to_owned);
    std::fs::write(
        entry.join("plugin.toml"),
        format!("{manifest}\n[component]\npath = \"plugin.wasm\"\nsha256 = \"{hash}\"\n"),
    )
    .expect("manifest");
}

/// A registry folder with copies of the given verified providers (and the chaos plugin
/// when asked).
fn registry<S: AsRef<str>>(providers: &[S], chaos: bool) -> tempfile::TempDir {
    let dir = portcullis_e2e::registry_copy(providers);
    if chaos {
        let manifest =
            std::fs::read_to_string(workspace().join("plugins/testing/chaos/plugin.toml"))
                .expect("chaos manifest");
        let wasm = std::fs::read(test_plugin("chaos")).expect("chaos wasm");
        add_entry(dir.path(), "chaos", &manifest, &wasm, None);
    }
    dir
}

fn host_with(registry: &Path, connectors: Value) -> Host {
    Host::start_with(
        &loopback_config(connectors, admin_everything()),
        HostOptions {
            env: vec![("PORTCULLIS_REGISTRY".into(), registry.display().to_string())],
            ..HostOptions::default()
        },
    )
}

fn bearer_connector(provider: &str, url: &str, extra: Value) -> Value {
    let mut c = json!({"protocol": "http", "url": url, "provider": provider,
        "auth": {"type": "bearer_token", "secret": "tok-provider-1"}});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Runs provider `id`'s golden fixtures through `h`: how many cases, and each failure
/// with its case name.
async fn run_fixtures(h: &Harness, id: &str) -> (usize, Vec<String>) {
    let fixtures = workspace().join("plugins").join(id).join("fixtures");
    let results = h.run_dir(&fixtures).await.expect("fixtures run");
    let failed = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
        .collect();
    (results.len(), failed)
}

/// The fixture harness of a registry entry folder (its `plugin.wasm` and `plugin.toml`).
async fn harness_of(entry: &std::path::Path) -> Harness {
    Harness::load(&entry.join("plugin.wasm"), &entry.join("plugin.toml"))
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", entry.display()))
}

/// The fixture harness of the `chaos` test plugin.
async fn chaos_harness() -> Harness {
    Harness::load(
        &test_plugin("chaos"),
        &workspace().join("plugins/testing/chaos/plugin.toml"),
    )
    .await
    .expect("load")
}

/// Runs `cases` through `h` as one fixture file, in a folder of its own.
async fn run_cases(h: &Harness, cases: Value) -> Vec<portcullis::plugins::harness::CaseResult> {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("cases.json"),
        json!({ "cases": cases }).to_string(),
    )
    .expect("write");
    h.run_dir(dir.path()).await.expect("run")
}

#[tokio::test]
async fn every_provider_passes_its_golden_fixtures_through_the_real_runtime() {
    for id in &verified_providers() {
        let entry = workspace().join("registry").join(id);
        let h = harness_of(&entry).await;
        let (cases, failed) = run_fixtures(&h, id).await;
        assert!(cases >= 8, "{id}: only {cases} cases");
        assert!(failed.is_empty(), "{id}:\n{}", failed.join("\n"));
    }
}

/// Within 0.1 the WIT only grows: a component built against 0.1.0 (the Slack plugin as
/// it was before `oauth-extras` was added in 0.1.1) loads on this host, passes Slack's
/// fixtures, and gets RFC 6749 form requests at its OAuth endpoints.
#[tokio::test]
async fn a_plugin_built_against_wit_0_1_0_still_loads_and_runs() {
    let old = workspace().join("tests/fixtures/plugins/slack-wit-0.1.0");
    let wasm = std::fs::read(old.join("plugin.wasm")).expect("the 0.1.0 component");
    assert!(
        wasm.windows(32)
            .any(|w| w == b"portcullis:provider/plugin@0.1.0"),
        "the fixture is a 0.1.0 component"
    );
    let h = harness_of(&old).await;
    assert!(!h.plugin().oauth_style.json);
    assert!(h.plugin().oauth_style.headers.is_empty());
    assert!(h.plugin().entries.is_empty());
    let (_, failed) = run_fixtures(&h, "slack").await;
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// A component built against 0.1.1 (the Notion plugin before `auth-extras` and
/// `tool-results` were added in 0.1.2) loads on this host with what 0.1.1 said (JSON
/// token requests with `Notion-Version`) and the earlier behaviour for the rest: refreshes
/// at the token URL, no static credential, tool answers as the API sent them.
#[tokio::test]
async fn a_plugin_built_against_wit_0_1_1_still_loads_and_runs() {
    let old = workspace().join("tests/fixtures/plugins/notion-wit-0.1.1");
    let wasm = std::fs::read(old.join("plugin.wasm")).expect("the 0.1.1 component");
    assert!(
        wasm.windows(32)
            .any(|w| w == b"portcullis:provider/plugin@0.1.1"),
        "the fixture is a 0.1.1 component"
    );
    let h = harness_of(&old).await;
    let p = h.plugin();
    assert!(p.oauth_style.json, "0.1.1's oauth-extras still read");
    assert!(p.refresh_url.is_none());
    assert!(p.static_credential.is_none());
    assert!(p.shaped_results.is_empty());
    let (_, failed) = run_fixtures(&h, "notion").await;
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// A component built against 0.1.2 (the Google plugin before `routes` was added in
/// 0.1.3) loads on this host, declares no routes, and every request it shapes goes
/// through `shape-request` with the same results as the routes of today's plugin.
#[tokio::test]
async fn a_plugin_built_against_wit_0_1_2_still_loads_and_runs() {
    let old = workspace().join("tests/fixtures/plugins/google-wit-0.1.2");
    let wasm = std::fs::read(old.join("plugin.wasm")).expect("the 0.1.2 component");
    assert!(
        wasm.windows(32)
            .any(|w| w == b"portcullis:provider/plugin@0.1.2"),
        "the fixture is a 0.1.2 component"
    );
    let h = harness_of(&old).await;
    assert!(!h.plugin().exports_routes());
    assert!(!h.plugin().entries.is_empty(), "0.1.1's catalog still read");
    let (_, failed) = run_fixtures(&h, "google").await;
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let current = workspace().join("registry/google");
    let h = harness_of(&current).await;
    assert!(h.plugin().exports_routes());
}

/// The plugins of a registry holding only `id`, copied from the entry folder `from`
/// (the folder lives as long as the returned guard).
async fn registry_of_one(
    id: &str,
    from: &std::path::Path,
) -> (
    tempfile::TempDir,
    std::sync::Arc<portcullis::plugins::Plugins>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join(id)).expect("entry");
    for file in ["plugin.toml", "plugin.wasm"] {
        std::fs::copy(from.join(file), dir.path().join(id).join(file)).expect("copy");
    }
    let plugins = portcullis::plugins::Plugins::open(Some(dir.path().into()), None, None)
        .await
        .expect("open the registry");
    (dir, plugins)
}

/// A component built against 0.1.3 (the Notion plugin before `routes-v2` was added in
/// 0.1.4) loads on this host, and its 0.1.3 routes still shape its requests without a
/// call: the API version it declares as a default header is sent, and the agent's own
/// kept, exactly as its `shape-request` does (its fixtures compare the two).
#[tokio::test]
async fn a_plugin_built_against_wit_0_1_3_still_routes() {
    use portcullis::plugins::{Bounds, ConnectionContext, Outgoing, types};
    let old = workspace().join("tests/fixtures/plugins/notion-wit-0.1.3");
    let wasm = std::fs::read(old.join("plugin.wasm")).expect("the 0.1.3 component");
    let has = |needle: &[u8]| wasm.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"portcullis:provider/routes@0.1.3") && !has(b"routes-v2"),
        "the fixture is a 0.1.3 component"
    );
    let h = harness_of(&old).await;
    assert!(h.plugin().exports_routes());
    let (_, failed) = run_fixtures(&h, "notion").await;
    assert!(failed.is_empty(), "{}", failed.join("\n"));

    let (_dir, plugins) = registry_of_one("notion", &old).await;
    let notion = plugins.get("notion").expect("notion loads");
    let ctx = types::Context {
        connector: "notion".into(),
        base_url: "https://api.notion.com".into(),
        variables: Vec::new(),
    };
    let base = url::Url::parse(&ctx.base_url).expect("api_url");
    let ctx = ConnectionContext::from(ctx);
    let bounds = Bounds {
        base: &base,
        credential_header: None,
    };
    let req = |headers| Outgoing {
        method: types::Method::Get,
        path: "v1/users/me",
        query: None,
        headers,
    };
    let none = http::HeaderMap::new();
    assert!(
        plugins
            .routes_cover(&notion, &ctx, &req(&none), bounds)
            .await
            .expect("routes")
    );
    let routed = plugins
        .shape(&notion, &ctx, req(&none), bounds)
        .await
        .expect("shaped by the routes");
    assert_eq!(routed.url.as_str(), "https://api.notion.com/v1/users/me");
    assert!(
        routed.set.contains_key("notion-version"),
        "{:?}",
        routed.set
    );
    assert!(routed.remove.is_empty() && routed.grant.is_none());
    let theirs_set = http::HeaderMap::from_iter([(
        http::HeaderName::from_static("notion-version"),
        http::HeaderValue::from_static("2025-09-03"),
    )]);
    let theirs = plugins
        .shape(&notion, &ctx, req(&theirs_set), bounds)
        .await
        .expect("shaped by the routes");
    assert!(theirs.set.is_empty(), "{:?}", theirs.set);
}

/// The two ways the plugin benchmark measures: a path Google's routes cover is shaped by
/// `shape` from the routes and by `shape_by_call` through the plugin, to the same
/// request.
#[tokio::test]
async fn shaping_by_routes_and_by_a_call_give_the_same_request() {
    use portcullis::plugins::{Bounds, ConnectionContext, Outgoing, types};
    let (_dir, plugins) = registry_of_one("google", &workspace().join("registry/google")).await;
    let google = plugins.get("google").expect("google loads");
    let ctx = types::Context {
        connector: "mail".into(),
        base_url: "https://gmail.googleapis.com".into(),
        variables: Vec::new(),
    };
    let headers = http::HeaderMap::from_iter([(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    )]);
    let req = Outgoing {
        method: types::Method::Get,
        path: "gmail/v1/users/me/messages",
        query: Some("maxResults=5".into()),
        headers: &headers,
    };
    let base = url::Url::parse(&ctx.base_url).expect("api_url");
    let ctx = ConnectionContext::from(ctx);
    let bounds = Bounds {
        base: &base,
        credential_header: None,
    };
    assert!(
        plugins
            .routes_cover(&google, &ctx, &req, bounds)
            .await
            .expect("routes")
    );
    let routed = plugins
        .shape(&google, &ctx, req.clone(), bounds)
        .await
        .expect("shaped by the routes");
    let called = plugins
        .shape_by_call(&google, ctx.wit().clone(), req.into_wit(), bounds)
        .await
        .expect("shaped by a call");
    assert_eq!(routed.url, called.url);
    assert_eq!(
        routed.url.as_str(),
        "https://gmail.googleapis.com/gmail/v1/users/me/messages?maxResults=5"
    );
    assert_eq!(routed.set, called.set);
    assert_eq!(routed.remove, called.remove);
    assert_eq!(routed.grant, called.grant);
}

/// A connection's context notes the routes its plugin declared for it, so a kept
/// context's requests skip the route cache; the note is the plugin's it was found for.
/// The same context shaped by another plugin (a rescan's, here Notion's after Google's)
/// finds that plugin's routes, as a fresh context does.
#[tokio::test]
async fn a_context_notes_routes_for_the_plugin_that_declared_them() {
    use portcullis::plugins::{Bounds, ConnectionContext, Outgoing, types};
    let (_g, google_plugins) =
        registry_of_one("google", &workspace().join("registry/google")).await;
    let google = google_plugins.get("google").expect("google loads");
    let (_n, notion_plugins) =
        registry_of_one("notion", &workspace().join("registry/notion")).await;
    let notion = notion_plugins.get("notion").expect("notion loads");
    let wit = types::Context {
        connector: "shared".into(),
        base_url: "https://api.notion.com/".into(),
        variables: Vec::new(),
    };
    let base = url::Url::parse(&wit.base_url).expect("base");
    let bounds = Bounds {
        base: &base,
        credential_header: None,
    };
    let none = http::HeaderMap::new();
    let req = Outgoing {
        method: types::Method::Get,
        path: "v1/users/me",
        query: None,
        headers: &none,
    };
    let ctx = ConnectionContext::from(wit.clone());
    // Google's routes for this context are found first and noted on it.
    let by_google = google_plugins
        .shape(&google, &ctx, req.clone(), bounds)
        .await
        .expect("shaped by google's routes");
    assert!(!by_google.set.contains_key("notion-version"));
    let fresh = ConnectionContext::from(wit);
    for _ in 0..2 {
        let shaped = notion_plugins
            .shape(&notion, &ctx, req.clone(), bounds)
            .await
            .expect("shaped");
        let again = notion_plugins
            .shape(&notion, &fresh, req.clone(), bounds)
            .await
            .expect("shaped");
        // Notion's routes (its API version sent), not the note Google's left.
        assert!(
            shaped.set.contains_key("notion-version"),
            "{:?}",
            shaped.set
        );
        assert_eq!(shaped.url.as_str(), "https://api.notion.com/v1/users/me");
        assert_eq!((shaped.url, shaped.set), (again.url, again.set));
    }
    // And Google's note is still Google's: the same shaping as before.
    let by_google_again = google_plugins
        .shape(&google, &ctx, req, bounds)
        .await
        .expect("shaped by google's routes");
    assert_eq!(
        (by_google.url, by_google.set),
        (by_google_again.url, by_google_again.set)
    );
}

/// GitHub's, Slack's and Trello's routes stand in for their `shape-request` on every
/// request they cover, beyond the recorded fixtures: a few thousand requests made up
/// from the awkward parts of each rule (header names in any case, repeated, padded or
/// blank values, queries with empty or encoded parameters, GitHub Enterprise bases with
/// and without a trailing `/`, paths at and around `/graphql`) are shaped both ways and
/// must come out the same, and a request the call refuses must not be covered.
#[tokio::test]
async fn routes_agree_with_shape_request_on_made_up_requests() {
    use portcullis::plugins::{Bounds, ConnectionContext, Outgoing, types};

    /// xorshift64: the same cases on every run, no dependency.
    struct Dice(u64);
    impl Dice {
        fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let len = u64::try_from(from.len()).expect("len");
            &from[usize::try_from(self.0 % len).expect("index")]
        }
    }
    let paths = [
        "/",
        "/user",
        "/repos/o/r/issues",
        "/graphql",
        "/graphql/",
        "/graphql/x",
        "/graphqlx",
        "/a%2Fb/c",
        "/members/me",
        "/search.messages",
        "/api/v3",
    ];
    let queries: [Option<&str>; 11] = [
        None,
        Some(""),
        Some("a=1"),
        Some("key=x"),
        Some("key"),
        Some("a=1&&b=2"),
        Some("k%65y=1&key=2&keys=3"),
        Some("&"),
        Some("=x"),
        Some("key=&x=%20&token=t"),
        Some("q=a+b&per_page=5"),
    ];
    let names = [
        "accept",
        "Accept",
        "ACCEPT",
        "user-agent",
        "User-Agent",
        "x-github-api-version",
        "X-GitHub-Api-Version",
        "x-slack-token",
        "X-Slack-Token",
        "content-type",
    ];
    let values = [
        "*/*",
        " */* ",
        "",
        " ",
        "application/json",
        "application/vnd.github.raw+json",
        "bot",
        "user",
        " user ",
        "User",
        "admin",
        "2026-03-10",
        "curl/8.5.0",
    ];
    let methods = [
        types::Method::Get,
        types::Method::Post,
        types::Method::Delete,
    ];
    /// A provider, its connector's base URL and its variables.
    type Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 6] = [
        ("github", "https://api.github.com", &[]),
        ("github", "https://ghe.example.com/api/v3", &[]),
        ("github", "https://ghe.example.com/api/v3/", &[]),
        ("slack", "https://slack.com/api", &[]),
        (
            "trello",
            "https://api.trello.com/1",
            &[("api_key", "a1b2c3d4e5f6")],
        ),
        (
            "trello",
            "https://trello.example.com/1/",
            &[("api_key", "K9")],
        ),
    ];
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let (mut covered, mut refused) = (0, 0);
    for (id, base_url, vars) in cases {
        let (_dir, plugins) = registry_of_one(id, &workspace().join("registry").join(id)).await;
        let plugin = plugins.get(id).expect("loads");
        let ctx = types::Context {
            connector: id.into(),
            base_url: base_url.into(),
            variables: vars
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        };
        let base = url::Url::parse(base_url).expect("base");
        let ctx = ConnectionContext::from(ctx);
        let bounds = Bounds {
            base: &base,
            credential_header: None,
        };
        for _ in 0..400 {
            let headers: http::HeaderMap = (0..*dice.pick(&[0usize, 1, 2, 3, 4]))
                .map(|_| {
                    let (name, value): (&&str, &&'static str) =
                        (dice.pick(&names), dice.pick(&values));
                    (
                        http::HeaderName::try_from(*name).expect("name"),
                        http::HeaderValue::from_static(value),
                    )
                })
                .collect();
            let req = Outgoing {
                method: *dice.pick(&methods),
                // Below the connector, as the pipeline has it: no leading `/`.
                path: &dice.pick(&paths)[1..],
                query: dice.pick(&queries).map(Into::into),
                headers: &headers,
            };
            let by_routes = plugins
                .routes_cover(&plugin, &ctx, &req, bounds)
                .await
                .expect("routes");
            let called = plugins
                .shape_by_call(&plugin, ctx.wit().clone(), req.clone().into_wit(), bounds)
                .await;
            let Ok(called) = called else {
                assert!(
                    !by_routes,
                    "{id}: a route covers a request the call refuses: {req:?}"
                );
                refused += 1;
                continue;
            };
            assert!(by_routes, "{id}: no route covers {req:?}");
            covered += 1;
            let routed = plugins
                .shape(&plugin, &ctx, req.clone(), bounds)
                .await
                .expect("shaped by the routes");
            let what = format!("{id} {base_url} {req:?}");
            assert_eq!(routed.url, called.url, "{what}");
            assert_eq!(routed.set, called.set, "{what}");
            assert_eq!(routed.remove, called.remove, "{what}");
            assert_eq!(routed.grant, called.grant, "{what}");
        }
    }
    // Both sides of the rule were exercised: covered requests and Slack's refusals.
    assert!(
        covered > 2000 && refused > 20,
        "{covered} covered, {refused} refused"
    );
}

/// Ok markers that no recorded answer tests fail a plugin's fixtures: nothing would then
/// check that `classify-response` calls the answers they match `ok`. Slack's fixtures
/// without the answers written as Slack writes them (`ok` first) have only answers whose
/// JSON objects are sent with their members sorted, which its marker does not match.
#[tokio::test]
async fn the_fixture_harness_fails_ok_markers_that_no_recorded_answer_tests() {
    let entry = workspace().join("registry/slack");
    let h = harness_of(&entry).await;
    let fixtures = workspace().join("plugins/slack/fixtures");
    let dir = tempfile::tempdir().expect("dir");
    for file in ["api.json", "tokens.json"] {
        let text = std::fs::read_to_string(fixtures.join(file)).expect("fixture");
        let mut fixture: Value = serde_json::from_str(&text).expect("JSON");
        let cases = fixture["cases"].as_array_mut().expect("cases");
        cases.retain(|c| !c["classify_response"]["body"].is_string());
        std::fs::write(dir.path().join(file), fixture.to_string()).expect("write");
    }
    let results = h.run_dir(dir.path()).await.expect("fixtures run");
    let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
    assert_eq!(failed.len(), 1, "{results:#?}");
    assert_eq!(failed[0].name, "ok markers");
    let why = failed[0].failure.as_deref().unwrap_or_default();
    assert!(
        why.contains("no classify_response case matches the ok marker for \"ok\"")
            && why.contains("string"),
        "{why}"
    );
    // With them, nothing fails.
    let results = h.run_dir(&fixtures).await.expect("fixtures run");
    assert!(results.iter().all(|r| r.failure.is_none()), "{results:#?}");
}

/// A route that gives a path something else than `shape-request` does fails the fixture
/// that shapes such a path, and so does a route over a path the plugin refuses.
#[tokio::test]
async fn the_fixture_harness_fails_routes_that_disagree_with_shape_request() {
    let h = chaos_harness().await;
    let ctx = |connector: &str| json!({"connector": connector, "base_url": "https://chaos.invalid", "variables": []});
    let routed = json!({"method": "Get", "path": "/routed/x", "query": "a=1", "headers": []});
    let results = run_cases(
        &h,
        json!([
            {"name": "agreeing route", "context": ctx("chaos"), "shape_request": routed,
             "expect": {"Ok": {"url": "https://chaos.invalid/routed/x?a=1",
                                "set_headers": [["x-shaped-by", "chaos-route"]]}}},
            {"name": "disagreeing route", "context": ctx("wrongroutes"), "shape_request": routed,
             "expect": {"Ok": {"url": "https://chaos.invalid/routed/x?a=1"}}},
        ]),
    )
    .await;
    assert!(results[0].failure.is_none(), "{results:?}");
    let why = results[1].failure.as_deref().expect("must fail");
    assert!(
        why.contains("disagree on the URL") && why.contains("/elsewhere/x?a=1"),
        "{why}"
    );
}

/// The host always gives `shape-request` a path starting with `/`; a fixture whose path
/// lacks it fails with that rule, rather than comparing routes on a request the host
/// never makes.
#[tokio::test]
async fn the_fixture_harness_refuses_a_path_without_its_slash() {
    let h = chaos_harness().await;
    let ctx = json!({"connector": "chaos", "base_url": "https://chaos.invalid", "variables": []});
    let results = run_cases(
        &h,
        json!([
            {"name": "no slash", "context": ctx,
             "shape_request": {"method": "Get", "path": "routed/x", "query": null, "headers": []},
             "expect": {"Ok": {"url": "https://chaos.invalid/routed/x"}}},
        ]),
    )
    .await;
    let why = results[0].failure.as_deref().expect("must fail");
    assert!(
        why.contains(r#"shape_request.path "routed/x" must start with "/""#),
        "{why}"
    );
}

#[tokio::test]
async fn a_fixture_that_expects_the_wrong_thing_fails_with_a_readable_reason() {
    let entry = workspace().join("registry/salesforce");
    let h = harness_of(&entry).await;
    let results = run_cases(
        &h,
        json!([
            {"name": "wrong version", "context": {"connector": "s", "base_url": "https://x.my.salesforce.com", "variables": []},
             "shape_request": {"method": "Get", "path": "/limits", "query": null, "headers": []},
             "expect": {"Ok": {"url": "https://x.my.salesforce.com/services/data/v1.0/limits"}}},
            {"name": "no hook", "expect": "Ok"}
        ]),
    )
    .await;
    let why = results[0].failure.as_deref().expect("must fail");
    assert!(why.contains("at /Ok/url") && why.contains("v63.0"), "{why}");
    assert!(
        results[1]
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("names no hook")),
        "{results:?}"
    );
}

#[tokio::test]
async fn the_registry_lists_every_verified_provider_with_its_defaults() {
    let reg = registry(&verified_providers(), false);
    let host = host_with(reg.path(), json!({}));
    let r = get_json(&host.url("/api/registry")).await;
    assert_eq!(r["errors"], json!([]), "{r}");
    let providers = r["providers"].as_array().expect("providers");
    let ids: Vec<&str> = providers.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "asana",
            "atlassian",
            "canva",
            "discord",
            "dropbox",
            "figma",
            "github",
            "google",
            "google/gmail",
            "google/drive",
            "google/calendar",
            "google/sheets",
            "hubspot",
            "linear",
            "microsoft",
            "microsoft/outlook",
            "microsoft/onedrive",
            "microsoft/teams",
            "notion",
            "salesforce",
            "slack",
            "trello",
            "zoom"
        ]
    );
    let by_id = |id: &str| {
        providers
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .expect("provider")
    };
    // A static credential of the provider's own, offered next to OAuth or instead of it.
    let discord = by_id("discord");
    assert_eq!(
        discord["static_auth"],
        json!({"type": "bearer_token", "scheme": "Bot", "secret": ""})
    );
    assert_eq!(
        discord["connector"]["server"]["auth"]["type"],
        "oauth2_authorization_code"
    );
    let trello = by_id("trello");
    assert_eq!(trello["oauth"], Value::Null);
    assert_eq!(
        trello["connector"]["server"]["auth"],
        json!({"type": "api_key", "name": "token", "in": "query", "secret": ""})
    );
    assert_eq!(
        by_id("figma")["oauth"]["refresh_url"],
        "https://api.figma.com/v1/oauth/refresh"
    );
    assert_eq!(by_id("slack")["static_auth"], Value::Null);
    let atl = by_id("atlassian");
    assert_eq!(
        atl["connector"]["server"]["auth"]["auth_params"],
        json!({"audience": "api.atlassian.com", "prompt": "consent"})
    );
    assert_eq!(atl["connector"]["id"], "Atlassian");
    let google = by_id("google");
    assert_eq!(
        google["oauth"]["auth_params"],
        json!({"access_type": "offline", "prompt": "consent"})
    );
    assert_eq!(google["oauth"]["keeps_refresh_token"], true);
    let slack = by_id("slack");
    assert_eq!(slack["oauth"]["scope_separator"], ",");
    assert_eq!(slack["oauth"]["pkce"], "unsupported");
    assert_eq!(slack["mcp_url"], "https://mcp.slack.com/mcp");
    // Google's products are entries of their own: the provider's connector with the
    // product's URL, scopes and name.
    let drive = by_id("google/drive");
    assert_eq!(drive["provider"], "google");
    assert_eq!(drive["name"], "Google Drive");
    assert_eq!(
        drive["oauth"]["scopes"],
        json!(["https://www.googleapis.com/auth/drive.readonly"])
    );
    assert_eq!(drive["connector"]["id"], "Drive");
    assert_eq!(drive["connector"]["server"]["provider"], "google");
    let gmail = by_id("google/gmail");
    assert_eq!(
        gmail["connector"]["server"]["url"],
        "https://gmail.googleapis.com"
    );
    assert_eq!(
        gmail["connector"]["server"]["auth"]["auth_params"],
        json!({"access_type": "offline", "prompt": "consent"})
    );
    let github = by_id("github");
    assert_eq!(github["mcp_url"], "https://api.githubcopilot.com/mcp/");
    assert_eq!(github["oauth"]["pkce"], "supported");
    assert_eq!(github["oauth"]["rotates_refresh_token"], true);
    // The picker files each provider under the category its manifest names.
    let categories: Vec<(&str, &str)> = providers
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["category"].as_str()?)))
        .collect();
    assert_eq!(
        categories,
        [
            ("asana", "Project management"),
            ("atlassian", "Project management"),
            ("canva", "Design"),
            ("discord", "Communication"),
            ("dropbox", "Files"),
            ("figma", "Design"),
            ("github", "Developer tools"),
            ("google", "Productivity"),
            ("google/gmail", "Productivity"),
            ("google/drive", "Productivity"),
            ("google/calendar", "Productivity"),
            ("google/sheets", "Productivity"),
            ("hubspot", "CRM"),
            ("linear", "Project management"),
            ("microsoft", "Productivity"),
            ("microsoft/outlook", "Productivity"),
            ("microsoft/onedrive", "Productivity"),
            ("microsoft/teams", "Productivity"),
            ("notion", "Productivity"),
            ("salesforce", "CRM"),
            ("slack", "Communication"),
            ("trello", "Project management"),
            ("zoom", "Communication"),
        ]
    );
    let sf = by_id("salesforce");
    assert_eq!(sf["connector"]["id"], "Salesforce");
    assert_eq!(sf["status"], "loaded");
    assert_eq!(sf["sha256"].as_str().map(str::len), Some(64));
    // The picker's connector object is a valid config entry once the operator's client
    // ID and secret are in, and says what is missing before.
    let validate = |server: &Value| {
        let picked = json!({"Salesforce": server});
        let data = tempfile::tempdir().expect("tmp");
        let out = std::process::Command::new(portcullis_e2e::binary())
            .arg("validate")
            .arg(write_temp(&loopback_config(picked, admin_everything())))
            .arg("--registry")
            .arg(reg.path())
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .expect("validate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let mut server = sf["connector"]["server"].clone();
    let (ok, out) = validate(&server);
    assert!(
        !ok && out.contains("auth.client_id: client_id is empty"),
        "{out}"
    );
    server["auth"]["client_id"] = json!("3MVG9-client");
    server["auth"]["client_secret"] = json!("client-secret");
    let (ok, out) = validate(&server);
    assert!(ok, "{out}");
}

fn write_temp(text: &str) -> PathBuf {
    let f = tempfile::Builder::new()
        .suffix(".hujson")
        .tempfile()
        .expect("temp");
    let (_, path) = f.keep().expect("keep");
    std::fs::write(&path, text).expect("write");
    path
}

#[tokio::test]
async fn bad_registry_entries_are_reported_and_skipped_never_fatal() {
    let reg = registry(&["salesforce"], false);
    let manifest = |id: &str| {
        format!(
            "schema_version = 1\nid = \"{id}\"\nname = \"{id}\"\nversion = \"0.0.1\"\n\n[capabilities]\nallowed_hosts = [\"api.example.com\"]\n"
        )
    };
    // Bytes that are not a component, with a matching hash.
    add_entry(
        reg.path(),
        "corrupt",
        &manifest("corrupt"),
        b"\0asm garbage that is not a component",
        None,
    );
    // A real component whose manifest names another hash.
    let sf = std::fs::read(workspace().join("registry/salesforce/plugin.wasm")).expect("sf");
    add_entry(
        reg.path(),
        "tampered",
        &manifest("tampered"),
        &sf,
        Some(&"0".repeat(64)),
    );
    // Built against a WIT version this host does not support.
    let future = std::fs::read(test_plugin("future")).expect("future");
    add_entry(reg.path(), "future", &manifest("future"), &future, None);
    // A manifest with a typo'd field.
    add_entry(
        reg.path(),
        "typo",
        &manifest("typo").replace("name =", "verison = \"x\"\nname ="),
        &sf,
        None,
    );
    // A good component under a manifest whose id disagrees with defaults().id.
    add_entry(reg.path(), "liar", &manifest("liar"), &sf, None);

    let host = host_with(reg.path(), json!({}));
    let r = get_json(&host.url("/api/registry")).await;
    let ids: Vec<&str> = r["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["salesforce"], "{r}");
    let error_of = |entry: &str| -> String {
        r["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .find(|e| e["entry"] == entry)
            .and_then(|e| e["message"].as_str())
            .unwrap_or_else(|| panic!("no error for {entry}: {r}"))
            .to_owned()
    };
    assert!(
        error_of("corrupt").contains("not a valid WebAssembly component"),
        "{r}"
    );
    assert!(
        error_of("tampered").contains("does not match its manifest"),
        "{r}"
    );
    let future = error_of("future");
    assert!(
        future.contains("portcullis:provider/plugin@2.0.0") && future.contains("0.1.x"),
        "{future}"
    );
    assert!(error_of("typo").contains("verison"), "{r}");
    assert!(
        error_of("liar").contains("defaults().id is \"salesforce\""),
        "{r}"
    );
    // Each is in the log too, and the host kept serving throughout.
    let logs = host.logs();
    for entry in ["corrupt", "tampered", "future", "typo", "liar"] {
        assert!(
            logs.contains(&format!("entry={entry}"))
                || logs.contains(&format!("entry=\"{entry}\"")),
            "{entry} not logged:\n{logs}"
        );
    }
}

#[tokio::test]
async fn the_registry_is_rescanned_when_an_entry_is_added() {
    let reg = registry(&["google"], false);
    let host = host_with(reg.path(), json!({}));
    // Providers, not their picker entries (Google's products).
    let count = |r: &Value| {
        r["providers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p.get("entry").is_none()).count())
    };
    assert_eq!(count(&get_json(&host.url("/api/registry")).await), 1);
    // Copy an entry in the way an operator would.
    let src = workspace().join("registry/slack");
    let staging = tempfile::tempdir_in(reg.path().parent().expect("parent")).expect("staging");
    for f in ["plugin.toml", "plugin.wasm"] {
        std::fs::copy(src.join(f), staging.path().join(f)).expect("copy");
    }
    std::fs::rename(staging.keep(), reg.path().join("slack")).expect("move in");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = get_json(&host.url("/api/registry")).await;
        if count(&r) == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slack never appeared: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A provider that leaves the registry while its connector is configured: the config
/// was valid when it loaded (an unknown provider is refused at load), so requests answer
/// 503 and the connector's health says why.
#[tokio::test]
async fn a_connector_whose_provider_is_no_longer_loaded_answers_503() {
    let reg = registry(&["salesforce"], false);
    let up = Fixture::start().await;
    let host = host_with(
        reg.path(),
        json!({"sf": bearer_connector("salesforce", &up.url(), json!({}))}),
    );
    std::fs::remove_dir_all(reg.path().join("salesforce")).expect("remove entry");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (status, code, msg) = loop {
        let resp = client()
            .get(host.url("/v1/connectors/sf/limits"))
            .send()
            .await
            .expect("request");
        if resp.status() == 503 {
            break error_of(resp).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the entry was never dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!((status, code.as_str()), (503, "provider_unavailable"));
    assert!(msg.contains("GET /api/registry"), "{msg}");
    let list = get_json(&host.url("/api/connectors")).await;
    let health = &list["connectors"][0]["health"];
    assert_eq!(health["state"], "failing", "{list}");
    assert_eq!(health["checks"]["provider"]["ok"], false, "{list}");
}

/// Each misbehaving call fails alone, with a clear error, before anything is sent; a
/// well-behaved connector keeps serving at the same time, and so does the misbehaving
/// plugin itself for its next, ordinary request.
#[tokio::test]
async fn misbehaving_plugins_fail_only_their_own_call() {
    let reg = registry(&["salesforce"], true);
    let up = Fixture::start().await;
    up.json("/fine", 200, json!({"ok": true}));
    up.json(
        "/services/data/v63.0/limits",
        200,
        json!({"DailyApiRequests": {"Max": 15000}}),
    );
    let host = host_with(
        reg.path(),
        json!({
            "chaos": bearer_connector("chaos", &up.url(), json!({})),
            "sf": bearer_connector("salesforce", &up.url(), json!({})),
        }),
    );
    let cases = [
        ("loop", 502, "plugin_failed", "deadline"),
        ("oom", 502, "plugin_failed", "memory limit"),
        ("trap", 502, "plugin_failed", "chaos: asked to panic"),
        ("huge", 502, "plugin_failed", "refuses"),
        (
            "escape",
            502,
            "plugin_failed",
            "outside the provider's declared hosts",
        ),
        ("credential", 502, "plugin_failed", "credential"),
        ("error", 400, "bad_request", "chaos: asked to refuse"),
    ];
    // The looping call runs while the other connector serves.
    let looping = tokio::spawn({
        let url = host.url("/v1/connectors/chaos/loop");
        async move { error_of(client().get(url).send().await.expect("loop")).await }
    });
    let sf = get_json(&host.url("/v1/connectors/sf/limits")).await;
    assert_eq!(sf["DailyApiRequests"]["Max"], 15000);
    let (status, code, msg) = looping.await.expect("join");
    assert_eq!((status, code.as_str()), (502, "plugin_failed"), "{msg}");
    assert!(msg.contains("deadline"), "{msg}");

    for (path, want_status, want_code, want_text) in cases {
        let resp = client()
            .get(host.url(&format!("/v1/connectors/chaos/{path}")))
            .send()
            .await
            .expect("request");
        let (status, code, msg) = error_of(resp).await;
        assert_eq!(
            (status, code.as_str()),
            (want_status, want_code),
            "{path}: {msg}"
        );
        assert!(msg.contains(want_text), "{path}: {msg}");
        assert!(msg.contains("not sent") || status == 400, "{path}: {msg}");
        // The plugin keeps working for the next request.
        let ok = client()
            .get(host.url("/v1/connectors/chaos/fine"))
            .send()
            .await
            .expect("fine");
        assert_eq!(ok.status(), 200, "after {path}");
    }
    let seen = up.seen();
    assert!(
        seen.iter()
            .all(|s| s.path == "/fine" || s.path.starts_with("/services/")),
        "a failed plugin call reached the upstream: {seen:?}"
    );
    assert_eq!(
        up.seen_at("/fine")[0]
            .headers
            .get("x-shaped-by")
            .map(String::as_str),
        Some("chaos")
    );
    assert_eq!(
        up.seen_at("/fine")[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some("Bearer tok-provider-1")
    );
    // Plugin log lines reach the host log with the plugin id.
    host.wait_for_log("shaping /fine").await;
    let metrics = portcullis_e2e::metrics_from(&host, "127.0.0.1").await;
    for kind in ["timeout", "memory", "trap", "invalid"] {
        assert!(
            metrics.contains(&format!("hook=\"shape-request\",outcome=\"{kind}\"")),
            "{kind} not counted:\n{metrics}"
        );
    }
    // Time inside the plugins, failed calls included (a deadline shows as time spent).
    let calls: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_plugin_duration_seconds_count{")
                && l.contains("hook=\"shape-request\"")
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    assert!(calls >= 5, "plugin time not measured:\n{metrics}");
}

#[tokio::test]
async fn salesforce_requests_get_the_versioned_data_path_and_errors_are_classified() {
    let reg = registry(&["salesforce"], false);
    let up = Fixture::start().await;
    up.json(
        "/services/data/v63.0/sobjects/Account/001xx000003DGb2AAG",
        200,
        json!({"attributes": {"type": "Account"}, "Id": "001xx000003DGb2AAG", "Name": "Acme"}),
    );
    up.json(
        "/services/data/v62.0/query",
        200,
        json!({"totalSize": 1, "done": true, "records": []}),
    );
    up.json(
        "/services/data/v63.0/sobjects/Contact",
        401,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
    );
    // A transient 503, then success: a bodiless GET is retried once.
    up.on(
        "/services/data/v63.0/limits",
        vec![
            Canned::json(503, json!([{"errorCode": "SERVER_UNAVAILABLE"}])),
            Canned::json(200, json!({"DailyApiRequests": {"Max": 15000}})),
        ],
    );
    let host = host_with(
        reg.path(),
        json!({
            "sf": bearer_connector("salesforce", &up.url(), json!({})),
            "sf62": bearer_connector("Salesforce", &up.url(), json!({"provider_vars": {"api_version": "62.0"}})),
        }),
    );
    let acct = get_json(&host.url("/v1/connectors/sf/sobjects/Account/001xx000003DGb2AAG")).await;
    assert_eq!(acct["Name"], "Acme");
    let seen = &up.seen_at("/services/data/v63.0/sobjects/Account/001xx000003DGb2AAG")[0];
    assert_eq!(seen.headers["authorization"], "Bearer tok-provider-1");

    let q = get_json(&host.url("/v1/connectors/sf62/query?q=SELECT+Id+FROM+Account")).await;
    assert_eq!(q["done"], true);
    assert_eq!(
        up.seen_at("/services/data/v62.0/query")[0].query.as_deref(),
        Some("q=SELECT+Id+FROM+Account")
    );

    let resp = client()
        .post(host.url("/v1/connectors/sf/sobjects/Contact"))
        .json(&json!({"LastName": "Doe"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401, "the upstream status is relayed");
    assert_eq!(resp.headers()["portcullis-upstream-class"], "reauth");
    assert!(
        resp.headers()["portcullis-upstream-error"]
            .to_str()
            .unwrap_or_default()
            .contains("INVALID_SESSION_ID")
    );
    let body: Value = resp.json().await.expect("body relayed whole");
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");

    let limits = get_json(&host.url("/v1/connectors/sf/limits")).await;
    assert_eq!(limits["DailyApiRequests"]["Max"], 15000);
    assert_eq!(
        up.seen_at("/services/data/v63.0/limits").len(),
        2,
        "one retry"
    );
}

#[tokio::test]
async fn atlassian_discovers_the_cloud_id_once_and_asks_when_several_sites_exist() {
    let reg = registry(&["atlassian"], false);
    let up = Fixture::start().await;
    let site = |id: &str, name: &str, sub: &str| {
        json!({"id": id, "name": name, "url": format!("https://{sub}.atlassian.net"),
               "scopes": ["read:jira-work", "write:jira-work"], "avatarUrl": "https://example.invalid/a.png"})
    };
    up.json(
        "/oauth/token/accessible-resources",
        200,
        json!([
            site("aaaa-1111", "Acme", "acme"),
            site("bbbb-2222", "Beta", "beta")
        ]),
    );
    up.json(
        "/ex/jira/bbbb-2222/rest/api/3/myself",
        200,
        json!({"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Mia"}),
    );
    let atl =
        |vars: Value| bearer_connector("atlassian", &up.url(), json!({"provider_vars": vars}));
    let mut host = host_with(reg.path(), json!({"atl": atl(json!({}))}));

    // Two sites, no choice: 409 naming the setting and the options; nothing guessed.
    let resp = client()
        .get(host.url("/v1/connectors/atl/jira/rest/api/3/myself"))
        .send()
        .await
        .expect("request");
    let (status, code, msg) = error_of(resp).await;
    assert_eq!(
        (status, code.as_str()),
        (409, "provider_choice_required"),
        "{msg}"
    );
    assert!(
        msg.contains("provider_vars.site") && msg.contains("\"acme\"") && msg.contains("\"beta\""),
        "{msg}"
    );
    assert!(
        up.seen_at("/ex/jira/aaaa-2222/rest/api/3/myself")
            .is_empty()
    );

    // The admin chooses; the reloaded config discovers again and serves.
    host.write_config(&loopback_config(
        json!({"atl": atl(json!({"site": "beta"}))}),
        admin_everything(),
    ));
    host.wait_for_log("config reloaded").await;
    let before = up.seen_at("/oauth/token/accessible-resources").len();
    for _ in 0..3 {
        let me = get_json(&host.url("/v1/connectors/atl/jira/rest/api/3/myself")).await;
        assert_eq!(me["displayName"], "Mia");
    }
    let lookups = up.seen_at("/oauth/token/accessible-resources");
    assert_eq!(
        lookups.len(),
        before + 1,
        "discovery runs once, then is cached"
    );
    assert_eq!(
        lookups[before].headers["authorization"], "Bearer tok-provider-1",
        "discovery requests carry the connector's credential"
    );
    host.stop();
}

#[tokio::test]
async fn slack_errors_inside_200_are_marked_and_the_token_header_is_not_forwarded() {
    let reg = registry(&["slack"], false);
    let up = Fixture::start().await;
    up.json(
        "/chat.postMessage",
        200,
        json!({"ok": false, "error": "channel_not_found"}),
    );
    // As Slack writes it: `ok` first, which the plugin's ok marker recognises.
    up.on(
        "/conversations.list",
        vec![Canned {
            body: r#"{"ok":true,"channels":[{"id":"C1","name":"general"}],"response_metadata":{"next_cursor":""}}"#.into(),
            ..Canned::json(200, Value::Null)
        }],
    );
    up.on(
        "/users.list",
        vec![
            Canned::json(429, json!({"ok": false, "error": "ratelimited"}))
                .header("retry-after", "7"),
        ],
    );
    let host = host_with(
        reg.path(),
        json!({"slack": bearer_connector("slack", &up.url(), json!({}))}),
    );
    let resp = client()
        .post(host.url("/v1/connectors/slack/chat.postMessage"))
        .json(&json!({"channel": "C404", "text": "hi"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200, "Slack's status is relayed unchanged");
    assert_eq!(resp.headers()["portcullis-upstream-class"], "failed");
    assert_eq!(
        resp.headers()["portcullis-upstream-error"],
        "Slack: channel_not_found"
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "channel_not_found");
    assert_eq!(
        serde_json::from_str::<Value>(&up.seen_at("/chat.postMessage")[0].body).expect("sent body")
            ["channel"],
        "C404"
    );

    let resp = client()
        .get(host.url("/v1/connectors/slack/conversations.list?limit=1"))
        .header("x-slack-token", "bot")
        .send()
        .await
        .expect("list");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("portcullis-upstream-class").is_none());
    let seen = &up.seen_at("/conversations.list")[0];
    assert!(!seen.headers.contains_key("x-slack-token"), "{seen:?}");
    assert_eq!(seen.query.as_deref(), Some("limit=1"));

    let resp = client()
        .get(host.url("/v1/connectors/slack/users.list"))
        .send()
        .await
        .expect("users");
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["portcullis-upstream-class"], "rate-limited");
    assert_eq!(resp.headers()["retry-after"], "7");

    let resp = client()
        .get(host.url("/v1/connectors/slack/auth.test"))
        .header("x-slack-token", "admin")
        .send()
        .await
        .expect("bad token type");
    let (status, code, msg) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    assert!(msg.contains("x-slack-token"), "{msg}");
    assert!(up.seen_at("/auth.test").is_empty());
    // The plugin's route shaped the others without a call; the value it does not list
    // went to `shape-request`, which answered with the refusal: the only call. The
    // `ok:false` and the 429 answers were classified by calls; the successful one by the
    // plugin's ok marker, without one.
    portcullis_e2e::assert_plugin_calls(
        &host,
        "slack",
        &[
            ("request-routes", "ok", 1),
            ("shape-request", "ok", 1),
            ("classify-response", "ok", 2),
        ],
    )
    .await;
}

#[tokio::test]
async fn google_paths_are_shaped_per_api_and_body_rate_limits_get_retry_after() {
    let reg = registry(&["google"], false);
    let up = Fixture::start().await;
    up.json(
        "/v4/spreadsheets/abc/values/A1:B2",
        200,
        json!({"range": "Sheet1!A1:B2", "values": [["a", "b"]]}),
    );
    up.on(
        "/gmail/v1/users/me/messages",
        vec![Canned::json(
            403,
            json!({"error": {"code": 403, "message": "User-rate limit exceeded.", "errors": [{"reason": "userRateLimitExceeded"}]}}),
        )],
    );
    let host = host_with(
        reg.path(),
        json!({"gdrive": bearer_connector("google", &up.url(), json!({}))}),
    );
    let v =
        get_json(&host.url("/v1/connectors/gdrive/sheets/v4/spreadsheets/abc/values/A1:B2")).await;
    assert_eq!(v["values"][0][1], "b");
    let resp = client()
        .get(host.url("/v1/connectors/gdrive/gmail/v1/users/me/messages"))
        .send()
        .await
        .expect("gmail");
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["portcullis-upstream-class"], "rate-limited");
    // Both paths are covered by the plugin's routes: one `request-routes` call for the
    // connector, no `shape-request` call.
    portcullis_e2e::assert_plugin_calls(
        &host,
        "google",
        &[("request-routes", "ok", 1), ("shape-request", "ok", 0)],
    )
    .await;
}

/// Requests a plugin's routes cover are shaped by the host from the routes it asked for
/// once, as `shape-request` would shape them (the agent's own header kept); other paths
/// still call the plugin; routes the host refuses (a target off the declared hosts) are
/// counted and logged, and that connector's requests are shaped by calls.
#[tokio::test]
async fn routes_shape_covered_paths_without_a_plugin_call_and_refused_routes_fall_back() {
    let reg = registry::<&str>(&[], true);
    let up = Fixture::start().await;
    up.json("/routed/a", 200, json!({"ok": "a"}));
    up.json("/fine", 200, json!({"ok": true}));
    let host = host_with(
        reg.path(),
        json!({
            "chaos": bearer_connector("chaos", &up.url(), json!({})),
            "escaperoutes": bearer_connector("chaos", &up.url(), json!({})),
            "badquery": bearer_connector("chaos", &up.url(), json!({})),
            "twicegrant": bearer_connector("chaos", &up.url(), json!({})),
            "manyparams": bearer_connector("chaos", &up.url(), json!({})),
            "noname": bearer_connector("chaos", &up.url(), json!({})),
        }),
    );
    for _ in 0..3 {
        let v = get_json(&host.url("/v1/connectors/chaos/routed/a?x=1")).await;
        assert_eq!(v["ok"], "a");
    }
    let theirs = client()
        .get(host.url("/v1/connectors/chaos/routed/a"))
        .header("x-shaped-by", "agent")
        .send()
        .await
        .expect("request");
    assert_eq!(theirs.status(), 200);
    let seen = up.seen_at("/routed/a");
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0].query.as_deref(), Some("x=1"));
    let shaped_by: Vec<_> = seen
        .iter()
        .map(|s| s.headers.get("x-shaped-by").cloned())
        .collect();
    assert_eq!(
        shaped_by,
        [
            Some("chaos-route"),
            Some("chaos-route"),
            Some("chaos-route"),
            Some("agent")
        ]
        .map(|h| h.map(str::to_owned))
    );
    // The credential is injected after routing, as after a call.
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some("Bearer tok-provider-1")
    );
    assert_eq!(
        get_json(&host.url("/v1/connectors/chaos/fine")).await["ok"],
        true
    );
    portcullis_e2e::assert_plugin_calls(
        &host,
        "chaos",
        &[("request-routes", "ok", 1), ("shape-request", "ok", 1)],
    )
    .await;

    // Refused routes: the request is shaped by a call and still reaches the upstream;
    // the refusal is asked for and counted once.
    for _ in 0..2 {
        let v = get_json(&host.url("/v1/connectors/escaperoutes/routed/a")).await;
        assert_eq!(v["ok"], "a");
    }
    assert!(
        up.seen().iter().all(|s| !s.path.contains("evil")),
        "{:?}",
        up.seen()
    );
    portcullis_e2e::assert_plugin_calls(
        &host,
        "chaos",
        &[
            ("request-routes", "ok", 2),
            ("request-routes", "invalid", 1),
            ("shape-request", "ok", 3),
        ],
    )
    .await;
    host.wait_for_log("outside the provider's declared hosts")
        .await;

    // What WIT 0.1.4 added is checked as strictly: a query parameter that would split
    // the query, more parameters than a route may set, one without a name, a grant
    // header value listed twice. Each context falls back to calls.
    let refused = ["badquery", "manyparams", "noname", "twicegrant"];
    for connector in refused {
        let v = get_json(&host.url(&format!("/v1/connectors/{connector}/routed/a?x=1"))).await;
        assert_eq!(v["ok"], "a", "{connector}");
    }
    let last = up.seen_at("/routed/a");
    assert!(
        last[last.len() - refused.len()..]
            .iter()
            .all(|s| s.query.as_deref() == Some("x=1")),
        "{last:?}"
    );
    portcullis_e2e::assert_plugin_calls(
        &host,
        "chaos",
        &[("request-routes", "invalid", 5), ("shape-request", "ok", 7)],
    )
    .await;
    host.wait_for_log("is not letters, digits").await;
    host.wait_for_log("a route with 33 query parameters; at most 32")
        .await;
    host.wait_for_log("lists the value \"a\" twice").await;
}

/// Under a 4 GiB `ulimit -v` the host starts with every verified provider, keeps its
/// plugin pool (sized to the limit instead of reserving about a terabyte) and shapes
/// concurrent requests.
#[tokio::test]
async fn plugins_stay_pooled_and_shape_requests_under_a_four_gib_address_space_limit() {
    let reg = registry(&["salesforce", "atlassian", "slack", "google"], false);
    let up = Fixture::start().await;
    up.json(
        "/v4/spreadsheets/abc/values/A1:B2",
        200,
        json!({"range": "Sheet1!A1:B2", "values": [["a", "b"]]}),
    );
    let host = Host::start_with(
        &loopback_config(
            json!({"gdrive": bearer_connector("google", &up.url(), json!({}))}),
            admin_everything(),
        ),
        HostOptions {
            env: vec![(
                "PORTCULLIS_REGISTRY".into(),
                reg.path().display().to_string(),
            )],
            address_space_limit: Some(4 << 30),
            ..HostOptions::default()
        },
    );
    let url = host.url("/v1/connectors/gdrive/sheets/v4/spreadsheets/abc/values/A1:B2");
    let answers = futures_util::future::join_all((0..32).map(|_| get_json(&url))).await;
    for v in answers {
        assert_eq!(v["values"][0][1], "b", "{v}");
    }
    let logs = host.logs();
    let sized = logs
        .lines()
        .find(|l| l.contains("plugin sandbox sized to the address space limit"))
        .unwrap_or_else(|| panic!("no sizing line in the log:\n{logs}"));
    assert!(
        sized.contains("address_space_limit_mib=4096") && sized.contains("pooling=true"),
        "{sized}"
    );
    assert!(!logs.contains("pooling allocator is unavailable"), "{logs}");
}

#[tokio::test]
async fn plugin_tools_are_mcp_tools_run_through_the_proxy_with_the_connector_credential() {
    let reg = registry(&["slack"], false);
    let up = Fixture::start().await;
    up.json(
        "/conversations.list",
        200,
        json!({"ok": true, "channels": [{"id": "C1", "name": "general"}], "response_metadata": {"next_cursor": ""}}),
    );
    let host = host_with(
        reg.path(),
        json!({
            "slack": bearer_connector("slack", &up.url(), json!({"description": "Team chat"})),
            "github": {"protocol": "http", "url": "https://api.github.com", "description": "GitHub REST API (read-only)",
                       "context": "Use this connector to look up repository metadata and pull request status."},
            // No url: the provider's default API is the upstream.
            "team": {"protocol": "http", "provider": "slack",
                     "auth": {"type": "bearer_token", "secret": "tok-provider-2"}},
        }),
    );
    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let tools: Vec<String> = agent
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    for t in [
        "aperture_list_connectors",
        "slack_list_channels",
        "slack_read_channel",
        "slack_post_message",
    ] {
        assert!(tools.contains(&t.to_owned()), "{t} missing: {tools:?}");
    }
    let mut p = rmcp::model::CallToolRequestParams::new("slack_list_channels");
    p = p.with_arguments(json!({"limit": 5}).as_object().cloned().expect("object"));
    let r = agent.call_tool(p).await.expect("call");
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let text: String = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    assert!(text.contains("general"), "{text}");
    let seen = &up.seen_at("/conversations.list")[0];
    assert_eq!(seen.headers["authorization"], "Bearer tok-provider-1");
    assert!(
        seen.query
            .as_deref()
            .unwrap_or_default()
            .contains("limit=5"),
        "{seen:?}"
    );

    // A bad argument is the plugin's to refuse, as a tool error the model can read.
    let p = rmcp::model::CallToolRequestParams::new("slack_read_channel");
    let r = agent.call_tool(p).await.expect("call");
    assert_eq!(r.is_error, Some(true));

    let r = agent
        .call_tool(rmcp::model::CallToolRequestParams::new(
            "aperture_list_connectors",
        ))
        .await
        .expect("list connectors");
    let text: String = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    let base = host.url("");
    let base = base.trim_end_matches('/');
    for line in [
        "Aperture HTTP API Connectors".to_owned(),
        format!("Base URL: {base}"),
        "## github".to_owned(),
        format!("- Endpoint: {base}/v1/connectors/github/"),
        "- Upstream: https://api.github.com".to_owned(),
        "- Description: GitHub REST API (read-only)".to_owned(),
        "- Context: Use this connector to look up repository metadata and pull request status."
            .to_owned(),
        "## slack".to_owned(),
        "- Description: Team chat".to_owned(),
        "## team".to_owned(),
        "- Upstream: https://slack.com/api".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    agent.cancel().await.expect("close");
}

fn call_params(name: &str) -> rmcp::model::CallToolRequestParams {
    rmcp::model::CallToolRequestParams::new(name.to_owned())
}

pub(crate) fn call_text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Plugin tools take the whole outbound pipeline and the same output check as every
/// other hook: a tool whose request sets a credential header, or tries to leave the
/// connector's origin, is refused before anything is sent; a plain one is shaped by the
/// plugin and carries the connector's credential. The chaos plugin implements the tools
/// hook without listing it anywhere, so these calls also show that an implemented hook
/// is called.
#[tokio::test]
async fn plugin_tools_are_checked_like_every_hook_and_take_the_pipeline() {
    let reg = registry::<&str>(&[], true);
    let up = Fixture::start().await;
    up.json("/fine", 200, json!({"ok": true}));
    let host = host_with(
        reg.path(),
        json!({"chaos": bearer_connector("chaos", &up.url(), json!({}))}),
    );
    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let names: Vec<String> = agent
        .list_all_tools()
        .await
        .expect("list")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    for want in ["chaos_fine", "chaos_leak_header", "chaos_escape"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }

    let fine = agent
        .call_tool(call_params("chaos_fine"))
        .await
        .expect("fine");
    assert_ne!(fine.is_error, Some(true), "{}", call_text(&fine));
    assert!(call_text(&fine).contains("\"ok\""), "{}", call_text(&fine));
    let seen = up.seen_at("/fine");
    let last = seen
        .last()
        .expect("the tool's request reached the upstream");
    assert_eq!(last.query.as_deref(), Some("q=1"));
    assert_eq!(
        last.headers.get("x-tool").map(String::as_str),
        Some("chaos")
    );
    assert_eq!(
        last.headers.get("x-shaped-by").map(String::as_str),
        Some("chaos"),
        "tool requests are shaped like proxied ones"
    );
    assert_eq!(
        last.headers.get("authorization").map(String::as_str),
        Some("Bearer tok-provider-1")
    );

    for (tool, why) in [
        (
            "chaos_leak_header",
            "credential or framing header \"authorization\"",
        ),
        ("chaos_escape", "not a plain path below the connector"),
    ] {
        let r = agent.call_tool(call_params(tool)).await.expect(tool);
        assert_eq!(r.is_error, Some(true), "{tool}: {}", call_text(&r));
        let text = call_text(&r);
        assert!(text.contains(why), "{tool}: {text}");
        assert!(!text.contains("tok-provider-1"), "{tool}: {text}");
    }
    assert!(
        up.seen().iter().all(|s| s.path == "/fine"),
        "a refused tool request reached the upstream: {:?}",
        up.seen()
    );
    agent.cancel().await.expect("close");
}
