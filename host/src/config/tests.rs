use super::*;

/// Most tests are about the config's own text: every reference resolves.
fn load(text: &str) -> (Option<Config>, Diagnostics) {
    load_permissive(text)
}

fn errors(d: &Diagnostics) -> Vec<String> {
    d.errors().map(ToString::to_string).collect()
}

fn warnings(d: &Diagnostics) -> Vec<String> {
    d.warnings().map(ToString::to_string).collect()
}

macro_rules! seed {
    ($name:literal) => {
        include_str!(concat!("../../../tests/fixtures/seeds/", $name, ".json"))
    };
}

#[test]
fn every_seed_example_loads_verbatim() {
    for (name, text) in [
        (
            "001-mcp-bearer-snowflake",
            seed!("001-mcp-bearer-snowflake"),
        ),
        (
            "001-mcp-client-credentials-analytics",
            seed!("001-mcp-client-credentials-analytics"),
        ),
        ("002-http-bearer-github", seed!("002-http-bearer-github")),
        (
            "002-http-api-key-weather",
            seed!("002-http-api-key-weather"),
        ),
        ("002-http-basic-jira", seed!("002-http-basic-jira")),
        (
            "002-http-client-credentials-analytics",
            seed!("002-http-client-credentials-analytics"),
        ),
        (
            "002-http-github-description-context",
            seed!("002-http-github-description-context"),
        ),
        (
            "002-grants-github-aperture",
            seed!("002-grants-github-aperture"),
        ),
    ] {
        let (config, diags) = load(text);
        assert!(config.is_some(), "{name} failed to load:\n{diags}");
        assert!(!diags.has_errors(), "{name}: {diags}");
    }
}

#[test]
fn seed_connectors_decode_to_the_documented_auth() {
    let (c, _) = load(seed!("002-http-api-key-weather"));
    let c = c.expect("loads");
    let Auth::ApiKey(k) = &c.connectors["weather"].auth else {
        panic!("api_key")
    };
    assert_eq!(k.name, "X-API-Key");
    assert_eq!(k.location, KeyLocation::Header);
    assert_eq!(k.secret, SecretRef::Inline("<your-api-key>".into()));

    let (c, _) = load(seed!("001-mcp-client-credentials-analytics"));
    let c = c.expect("loads");
    let a = &c.connectors["analytics"];
    assert_eq!(a.protocol, Protocol::Mcp);
    let Auth::ClientCredentials(cc) = &a.auth else {
        panic!("client credentials")
    };
    assert_eq!(cc.scopes, vec!["read:data".to_string()]);
    assert_eq!(a.provider, "Custom");

    let (c, _) = load(seed!("002-http-github-description-context"));
    let gh = &c.expect("loads").connectors["github"];
    assert_eq!(gh.description, "GitHub REST API (read-only)");
    assert!(
        gh.context
            .as_ref()
            .is_some_and(serde_json::Value::is_string)
    );
}

#[test]
fn embedded_default_loads_clean() {
    let (c, d) = load(EMBEDDED_DEFAULT);
    let c = c.expect("default config loads");
    assert!(d.is_empty(), "{d}");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.identity.mode, IdentityMode::Loopback);
}

#[test]
fn hujson_comments_and_trailing_commas_but_not_json5() {
    let (c, d) = load("// c\n{\"grants\": [], /* x */}\n");
    assert!(c.is_some(), "{d}");
    let (c, d) = load("{grants: []}");
    assert!(c.is_none());
    assert!(errors(&d)[0].contains("not valid HuJSON"), "{d}");
    let (c, d) = load("   ");
    assert!(c.is_none());
    assert!(errors(&d)[0].contains("must not be empty"));
}

#[test]
fn typo_in_auth_is_an_error_naming_field_connector_and_path() {
    let text = r#"{"connectors": {"servers": {"github": {"protocol": "http",
        "url": "https://api.github.com",
        "auth": {"type": "bearer_token", "secert": "x", "tokne": "y"}}}}}"#;
    let (c, d) = load(text);
    assert!(c.is_none());
    let errs = errors(&d);
    assert!(
        errs.iter()
            .any(|e| e.contains("connectors.servers.github.auth.secert")
                && e.contains("unknown field \"secert\"")
                && e.contains("connector \"github\"")),
        "{errs:?}"
    );
    // Every unknown field is reported, and the missing `secret` too.
    assert!(errs.iter().any(|e| e.contains("tokne")), "{errs:?}");
    assert!(
        errs.iter().any(|e| e.contains("missing field \"secret\"")),
        "{errs:?}"
    );
}

#[test]
fn every_auth_type_rejects_unknown_fields() {
    for (ty, fields) in [
        ("bearer_token", r#""secret": "s""#),
        (
            "api_key",
            r#""secret": "s", "name": "X-Key", "in": "header""#,
        ),
        ("basic", r#""username": "u", "password": "p""#),
        (
            "oauth2_client_credentials",
            r#""client_id": "c", "client_secret": "s", "token_url": "https://a.example/t""#,
        ),
        (
            "oauth2_authorization_code",
            r#""client_id": "c", "authorization_url": "https://a.example/a", "token_url": "https://a.example/t""#,
        ),
        ("oauth2_dcr", r#""scopes": []"#),
        ("none", r#""#),
    ] {
        let sep = if fields.is_empty() { "" } else { "," };
        let good = format!(
            r#"{{"connectors": {{"servers": {{"x": {{"protocol": "http", "url": "https://a.example",
               "auth": {{"type": "{ty}"{sep} {fields}}}}}}}}}}}"#
        );
        let (c, d) = load(&good);
        assert!(c.is_some(), "{ty}: {d}");
        let bad = good.replacen("\"type\"", "\"bogus\": 1, \"type\"", 1);
        let (c, d) = load(&bad);
        assert!(c.is_none(), "{ty} accepted an unknown field");
        assert!(
            errors(&d)
                .iter()
                .any(|e| e.contains("connectors.servers.x.auth.bogus")),
            "{ty}: {d}"
        );
    }
}

#[test]
fn connector_id_rules() {
    for (id, ok) in [
        ("github", true),
        ("Salesforce", true),
        ("a1", true),
        ("my_api", false),
        ("my-api", false),
        ("1api", false),
        ("aperture", false),
        ("tailscale", false),
        ("internal", false),
        ("a234567890123456789012345678901234", false),
    ] {
        let text = format!(
            r#"{{"connectors": {{"servers": {{"{id}": {{"protocol": "http", "url": "https://a.example"}}}}}}}}"#
        );
        let (c, d) = load(&text);
        assert_eq!(c.is_some(), ok, "{id}: {d}");
    }
}

#[test]
fn warnings_do_not_block_load_but_are_reported_with_paths() {
    let text = r#"{
        "basurl": "x",
        "flags": {"connectors": {"value": true}},
        "providers": {},
        "egress": {"allow_loopback": true, "bogus": 1},
        "connectors": {"servers": {
            "nourl": {"protocol": "http"},
            "meta": {"protocol": "http", "url": "http://169.254.169.254/latest"},
            "extra": {"protocol": "mcp", "url": "https://a.example", "colour": "red"}
        }}
    }"#;
    let (c, d) = load(text);
    assert!(c.is_some(), "{d}");
    let w = warnings(&d);
    for needle in [
        "basurl: unknown config key \"basurl\"",
        "providers: section \"providers\"",
        "egress.bogus",
        "connectors.servers.nourl.url",
        "connectors.servers.meta.url",
        "connectors.servers.extra.colour",
    ] {
        assert!(
            w.iter().any(|x| x.contains(needle)),
            "missing {needle} in {w:?}"
        );
    }
    // A deliberate switch is a notice: logged, but it fails neither a save nor --strict.
    assert!(
        d.notices()
            .any(|n| n.path == "egress.allow_loopback" && n.to_string().starts_with("notice:")),
        "{d}"
    );
}

#[test]
fn bad_values_are_errors_reported_together() {
    let text = r#"{
        "listen": "nowhere",
        "identity": {"mode": "magic"},
        "connectors": {"servers": {
            "a": {"protocol": "ftp", "url": "https://a.example"},
            "b": {"protocol": "http", "url": "ftp://a.example"},
            "c": {"protocol": "http", "url": "https://a.example", "labels": ["system"]},
            "d": {"protocol": "http", "url": "https://a.example", "auth": {"type": "magic"}},
            "e": {"protocol": "http", "url": "https://a.example", "auth": {"type": "api_key", "secret": "s", "name": "X", "in": "cookie"}},
            "f": {"protocol": "http", "url": "https://user:pw@a.example"}
        }},
        "grants": [{"app": {}}]
    }"#;
    let (c, d) = load(text);
    assert!(c.is_none());
    let e = errors(&d);
    for needle in [
        "listen:",
        "identity.mode",
        "connectors.servers.a.protocol",
        "connectors.servers.b.url",
        "connectors.servers.c.labels[0]",
        "connectors.servers.d.auth.type",
        "connectors.servers.e.auth.in",
        "connectors.servers.f.url",
        "grants[0].src",
    ] {
        assert!(
            e.iter().any(|x| x.contains(needle)),
            "missing {needle} in {e:?}"
        );
    }
}

#[test]
fn secrets_can_come_from_env_or_vault_and_never_print() {
    let text = r#"{"connectors": {"servers": {
        "a": {"protocol": "http", "url": "https://a.example", "auth": {"type": "bearer_token", "secret": {"env": "A_TOKEN"}}},
        "b": {"protocol": "http", "url": "https://a.example", "auth": {"type": "bearer_token", "secret": "hunter2"}}
    }}}"#;
    let (c, d) = load(text);
    let c = c.expect("loads");
    assert!(d.is_empty(), "{d}");
    let Auth::BearerToken(a) = &c.connectors["a"].auth else {
        panic!()
    };
    assert_eq!(a.secret, SecretRef::Env("A_TOKEN".into()));
    assert!(!format!("{:?}", c.connectors["b"]).contains("hunter2"));

    let (c, d) = load(
        r#"{"connectors": {"servers": {"a": {"protocol": "http", "url": "https://a.example",
            "auth": {"type": "bearer_token", "secret": {"env": "A", "vault": "B"}}}}}}"#,
    );
    assert!(c.is_none());
    assert!(
        errors(&d)[0].contains("connectors.servers.a.auth.secret"),
        "{d}"
    );
}

#[test]
fn grant_capabilities_decode_and_legacy_fields_warn() {
    let text = r#"{"grants": [
        {"src": ["group:ai"], "dst": ["x"], "app": {
            "tailscale.com/cap/aperture": [{"role": "user"}, {"connectors": "github/**"}, {"mcp_tools": "local/*"}],
            "example.com/cap/other": [{"anything": true}]
        }}
    ]}"#;
    let (c, d) = load(text);
    let c = c.expect("loads");
    assert_eq!(c.grants[0].caps.len(), 3);
    assert_eq!(
        c.grants[0].caps[1].connectors,
        vec!["github/**".to_string()]
    );
    let w = warnings(&d);
    assert!(w.iter().any(|x| x.contains("grants[0].dst")), "{w:?}");
    assert!(
        w.iter()
            .any(|x| x.contains("mcp_tools") && x.contains("deprecated")),
        "{w:?}"
    );
}

#[test]
fn secret_values_never_appear_in_diagnostics() {
    let text = r#"{"connectors": {"servers": {
        "a": {"protocol": "http", "url": "https://a.example", "auth": {"type": "basic", "username": "u", "password": 987654321}},
        "b": {"protocol": "http", "url": "https://a.example", "auth": {"type": "oauth2_client_credentials",
              "client_id": "c", "client_secret": "s", "token_url": "https://user:pa55word@auth.example/token"}}
    }}}"#;
    let (c, d) = load(text);
    assert!(c.is_none());
    let all = d.to_string();
    assert!(
        !all.contains("987654321") && !all.contains("pa55word"),
        "{all}"
    );
    assert!(
        all.contains("connectors.servers.a.auth.password") && all.contains("put it in quotes"),
        "{all}"
    );
    assert!(all.contains("connectors.servers.b.auth.token_url"), "{all}");
}

#[test]
fn public_url_and_revocation_url_are_checked() {
    let (c, d) = load(r#"{"public_url": "https://ai.example.ts.net"}"#);
    assert!(errors(&d).is_empty(), "{d}");
    assert_eq!(
        c.expect("config").public_url.map(|u| u.to_string()),
        Some("https://ai.example.ts.net/".to_owned())
    );
    for bad in [
        r#""ftp://x""#,
        r#""https://u:p@x""#,
        r#""https://x/?a=1""#,
        r#"42"#,
    ] {
        let (c, d) = load(&format!(r#"{{"public_url": {bad}}}"#));
        assert!(c.is_none(), "{bad}");
        assert!(
            errors(&d).iter().any(|e| e.contains("public_url")),
            "{bad}: {d}"
        );
    }
    let (c, d) = load(
        r#"{"connectors": {"servers": {"notes": {"protocol": "http", "url": "https://api.example.com",
            "auth": {"type": "oauth2_authorization_code", "client_id": "c",
              "authorization_url": "https://as.example.com/a", "token_url": "https://as.example.com/t",
              "revocation_url": "not a url"}}}}}"#,
    );
    assert!(c.is_none());
    assert!(
        errors(&d)
            .iter()
            .any(|e| e.contains("connectors.servers.notes.auth.revocation_url")),
        "{d}"
    );
}

fn slack() -> ProviderTemplate {
    ProviderTemplate {
        id: "slack".into(),
        name: "Slack".into(),
        description: "Slack workspace".into(),
        api_url: "https://slack.com/api".into(),
        mcp_url: None,
        oauth: Some(OAuthTemplate {
            authorization_url: "https://slack.com/oauth/v2/authorize".into(),
            token_url: "https://slack.com/api/oauth.v2.access".into(),
            scopes: vec!["channels:read".into(), "chat:write".into()],
            auth_params: [("team".to_owned(), "T1".to_owned())].into(),
        }),
        vars: Default::default(),
        connector_id: None,
        static_credential: None,
        url_inputs: Vec::new(),
    }
}

fn with_slack() -> Fixture {
    Fixture {
        providers: [("slack".to_owned(), slack())].into(),
        ..Default::default()
    }
}

#[test]
fn a_provider_connector_lacking_fields_gets_every_one_listed_with_the_default_to_paste() {
    let text = r#"{"connectors": {"servers": {"team": {"protocol": "http", "provider": "slack",
        "auth": {"type": "oauth2_authorization_code", "client_id": "c"}}}}}"#;
    let (c, d) = super::load(text, &with_slack());
    assert!(c.is_none());
    let all = d.to_string();
    for want in [
        "connectors.servers.team.auth.authorization_url: missing field \"authorization_url\"",
        "\"https://slack.com/oauth/v2/authorize\"",
        "connectors.servers.team.auth.token_url: missing field \"token_url\"",
        "\"https://slack.com/api/oauth.v2.access\"",
        "connectors.servers.team.auth.scopes",
        "[\"channels:read\",\"chat:write\"]",
        "connectors.servers.team.auth.auth_params",
        "connectors.servers.team.url",
        "\"url\": \"https://slack.com/api\"",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn providers_must_be_known_and_loaded() {
    let text = r#"{"connectors": {"servers": {"team": {"protocol": "http", "provider": "slak",
        "url": "https://slack.com/api"}}}}"#;
    let (c, d) = super::load(text, &with_slack());
    assert!(c.is_none());
    assert!(
        d.to_string()
            .contains("unknown provider \"slak\"; the registry has: slack"),
        "{d}"
    );
    let broken = Fixture {
        broken: Some("the component does not match its manifest".into()),
        ..Default::default()
    };
    let (c, d) = super::load(text, &broken);
    assert!(c.is_none());
    assert!(
        d.to_string()
            .contains("did not load (the component does not match"),
        "{d}"
    );
    // "Custom" needs no registry.
    let custom = text.replace("slak", "Custom");
    let (c, d) = super::load(&custom, &Fixture::default());
    assert!(c.is_some(), "{d}");
}

#[test]
fn a_template_filled_with_client_credentials_validates_clean() {
    let t = slack();
    let (id, server) = t
        .fill(&FromTemplate {
            provider: "slack".into(),
            id: None,
            protocol: None,
            client_id: Some("123.456".into()),
            client_secret: Some("s3cret".into()),
            secret: None,
            scopes: None,
            provider_vars: Default::default(),
            description: None,
        })
        .expect("an http connector");
    assert_eq!(id, "Slack");
    let text =
        serde_json::json!({"connectors": {"servers": {id.clone(): server.clone()}}}).to_string();
    let (c, d) = super::load(&text, &with_slack());
    let c = c.unwrap_or_else(|| panic!("{d}"));
    assert!(d.is_empty(), "{d}");
    let Auth::AuthorizationCode(a) = &c.connectors["Slack"].auth else {
        panic!("oauth")
    };
    assert_eq!(a.scopes, ["channels:read", "chat:write"]);
    assert_eq!(a.auth_params["team"], "T1");
    // Without a client ID the same template says what to paste.
    let mut empty = server;
    empty["auth"]["client_id"] = serde_json::json!("");
    let text = serde_json::json!({"connectors": {"servers": {"Slack": empty}}}).to_string();
    let (c, d) = super::load(&text, &with_slack());
    assert!(c.is_none());
    assert!(d.to_string().contains("client_id is empty"), "{d}");
}

fn from_template(t: &ProviderTemplate, req: serde_json::Value) -> (String, serde_json::Value) {
    let mut req = req;
    req["provider"] = serde_json::json!(t.id);
    let req: FromTemplate = serde_json::from_value(req).expect("a template request");
    t.fill(&req).expect("an http connector")
}

/// A provider with OAuth and a static credential of its own (Discord's bot tokens) gets
/// either, by what the operator supplies; one with only a static credential (Trello) is
/// sent its way; the result validates.
#[test]
fn a_template_with_a_static_credential_takes_a_pasted_token_the_providers_way() {
    let mut discord = slack();
    discord.id = "discord".into();
    discord.name = "Discord".into();
    discord.static_credential = Some(StaticCredential::Authorization("Bot".into()));
    let (_, bot) = from_template(&discord, serde_json::json!({"secret": "bot-token"}));
    assert_eq!(
        bot["auth"],
        serde_json::json!({"type": "bearer_token", "scheme": "Bot", "secret": "bot-token"})
    );
    let (_, user) = from_template(
        &discord,
        serde_json::json!({"client_id": "c", "client_secret": "s"}),
    );
    assert_eq!(user["auth"]["type"], "oauth2_authorization_code");
    assert!(user["auth"].get("secret").is_none(), "{user}");

    let mut trello = slack();
    trello.id = "trello".into();
    trello.oauth = None;
    trello.static_credential = Some(StaticCredential::Query("token".into()));
    assert_eq!(
        trello.connector(Protocol::Http)["auth"],
        serde_json::json!({"type": "api_key", "name": "token", "in": "query", "secret": ""})
    );
    let (_, server) = from_template(&trello, serde_json::json!({"secret": "t0ken"}));
    assert_eq!(
        server["auth"],
        serde_json::json!({"type": "api_key", "name": "token", "in": "query", "secret": "t0ken"})
    );
    let mut figma = trello.clone();
    figma.static_credential = Some(StaticCredential::Header("x-figma-token".into()));
    let (_, server) = from_template(&figma, serde_json::json!({"secret": "figd_1"}));
    assert_eq!(server["auth"]["name"], "x-figma-token");
    assert_eq!(server["auth"]["in"], "header");

    let fixture = Fixture {
        providers: [
            ("discord".to_owned(), discord),
            ("trello".to_owned(), trello),
        ]
        .into(),
        ..Default::default()
    };
    let text = serde_json::json!({"connectors": {"servers": {"Discord": bot, "Trello": server}}});
    let (c, d) = super::load(&text.to_string(), &fixture);
    let c = c.unwrap_or_else(|| panic!("{d}"));
    let Auth::BearerToken(b) = &c.connectors["Discord"].auth else {
        panic!("a bot token")
    };
    assert_eq!(b.scheme(), "Bot");
}

/// What a template cannot use is refused with what to give instead, never dropped: a
/// token next to an OAuth client, a token for an OAuth-only provider, an OAuth client
/// or scopes for a provider without OAuth, scopes next to a pasted token.
#[test]
fn a_template_refuses_credentials_it_would_drop() {
    let mut discord = slack();
    discord.name = "Discord".into();
    discord.static_credential = Some(StaticCredential::Authorization("Bot".into()));
    let mut trello = slack();
    trello.name = "Trello".into();
    trello.oauth = None;
    trello.static_credential = Some(StaticCredential::Query("token".into()));
    let cases = [
        (
            &discord,
            serde_json::json!({"client_id": "c", "secret": "t"}),
            "not both",
        ),
        (
            &discord,
            serde_json::json!({"client_secret": "s", "secret": "t"}),
            "not both",
        ),
        (
            &discord,
            serde_json::json!({"secret": "t", "scopes": ["bot"]}),
            "takes no `scopes`",
        ),
        (&slack(), serde_json::json!({"secret": "t"}), "OAuth only"),
        (
            &trello,
            serde_json::json!({"client_id": "c"}),
            "no OAuth sign-in",
        ),
        (
            &trello,
            serde_json::json!({"secret": "t", "scopes": ["read"]}),
            "no OAuth sign-in",
        ),
        (
            &trello,
            serde_json::json!({"client_id": "c", "secret": "t"}),
            "no OAuth sign-in",
        ),
    ];
    for (t, mut req, says) in cases {
        req["provider"] = serde_json::json!(t.id);
        let parsed: FromTemplate = serde_json::from_value(req.clone()).expect("request");
        let err = t.fill(&parsed).expect_err(&req.to_string());
        assert_eq!(err.code(), "invalid_config", "{req}");
        assert!(err.to_string().contains(says), "{req}: {err}");
        assert!(!err.to_string().contains("\"t\""), "{err}");
    }
}

/// Microsoft's tenant fills its OAuth URLs: the default in the template, the operator's
/// value in the connector made from it, and a value that would leave its segment is
/// refused before anything is saved.
#[test]
fn a_url_variable_fills_the_oauth_urls_and_must_be_one_segment() {
    let mut ms = slack();
    ms.id = "microsoft".into();
    ms.name = "Microsoft 365".into();
    let login = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0";
    ms.oauth = Some(OAuthTemplate {
        authorization_url: format!("{login}/authorize"),
        token_url: format!("{login}/token"),
        scopes: vec!["User.Read".into()],
        auth_params: Default::default(),
    });
    ms.vars = [("tenant".to_owned(), "common".to_owned())].into();
    ms.url_inputs = vec!["tenant".into()];
    assert_eq!(
        ms.connector(Protocol::Http)["auth"]["authorization_url"],
        "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    );
    let (_, server) = from_template(
        &ms,
        serde_json::json!({"client_id": "c", "provider_vars": {"tenant": "contoso.onmicrosoft.com"}}),
    );
    assert_eq!(
        server["auth"]["token_url"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(server["provider_vars"]["tenant"], "contoso.onmicrosoft.com");
    for bad in ["", "a/b", "evil.example/x?", "x y"] {
        let req: FromTemplate = serde_json::from_value(serde_json::json!({
            "provider": "microsoft", "client_id": "c", "provider_vars": {"tenant": bad}
        }))
        .expect("request");
        let err = ms.fill(&req).expect_err(bad);
        assert_eq!(err.code(), "invalid_config", "{bad}");
        assert!(err.to_string().contains("provider_vars.tenant"), "{err}");
    }
}

#[test]
fn a_bearer_scheme_must_be_one_http_token_and_a_refresh_url_a_url() {
    for (scheme, ok) in [
        ("Bot", true),
        ("Bearer", true),
        ("DPoP", true),
        ("Bot x", false),
        ("", false),
        ("B\u{f6}t", false),
    ] {
        let text = format!(
            r#"{{"connectors": {{"servers": {{"a": {{"protocol": "http", "url": "https://a.example.com",
                "auth": {{"type": "bearer_token", "secret": "t", "scheme": "{scheme}"}}}}}}}}}}"#
        );
        let (c, d) = super::load(&text, &Fixture::default());
        assert_eq!(c.is_some(), ok, "{scheme:?}: {d}");
        if !ok {
            assert!(
                errors(&d)
                    .iter()
                    .any(|e| e.contains("connectors.servers.a.auth.scheme")),
                "{scheme:?}: {d}"
            );
        }
    }
    let (c, d) = super::load(
        r#"{"connectors": {"servers": {"notes": {"protocol": "http", "url": "https://api.example.com",
            "auth": {"type": "oauth2_authorization_code", "client_id": "c", "scopes": ["a"],
              "authorization_url": "https://as.example.com/a", "token_url": "https://as.example.com/t",
              "refresh_url": "ftp://as.example.com/r"}}}}}"#,
        &Fixture::default(),
    );
    assert!(c.is_none());
    assert!(
        errors(&d)
            .iter()
            .any(|e| e.contains("connectors.servers.notes.auth.refresh_url")),
        "{d}"
    );
}

#[test]
fn secret_references_must_resolve_and_vault_trouble_is_a_warning() {
    let text = r#"{"connectors": {"servers": {
        "a": {"protocol": "http", "url": "https://a.example.com", "auth": {"type": "bearer_token", "secret": {"env": "PORTCULLIS_TEST_UNSET_VAR"}}},
        "b": {"protocol": "http", "url": "https://b.example.com", "auth": {"type": "bearer_token", "secret": {"vault": "nope"}}},
        "c": {"protocol": "http", "url": "https://c.example.com", "auth": {"type": "bearer_token", "secret": ""}},
        "d": {"protocol": "http", "url": "https://d.example.com", "auth": {"type": "bearer_token", "secret": {"vault": "multi"}}}
    }}}"#;
    let env = Fixture {
        vault: [("multi".to_owned(), "line1\nline2".to_owned())].into(),
        ..Default::default()
    };
    let (c, d) = super::load(text, &env);
    assert!(c.is_none());
    let all = d.to_string();
    for want in [
        "connectors.servers.a.auth.secret: environment variable PORTCULLIS_TEST_UNSET_VAR is not set",
        "connectors.servers.b.auth.secret: the vault has no secret named \"nope\"",
        "connectors.servers.c.auth.secret: the secret is empty",
        "connectors.servers.d.auth.secret: the secret contains a line break",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(!all.contains("line1"), "a value leaked: {all}");
    let in_use = Fixture {
        vault_error: Some("the vault is in use".into()),
        ..Default::default()
    };
    let only_b = r#"{"connectors": {"servers": {"b": {"protocol": "http", "url": "https://b.example.com",
        "auth": {"type": "bearer_token", "secret": {"vault": "nope"}}}}}}"#;
    let (c, d) = super::load(only_b, &in_use);
    assert!(c.is_some(), "{d}");
    assert!(
        warnings(&d)
            .iter()
            .any(|w| w.contains("was not checked: the vault is in use")),
        "{d}"
    );
}

#[test]
fn duplicate_keys_and_out_of_range_numbers_are_errors() {
    let text = r#"{"identity": {"mode": "loopback"}, "identity": {"mode": "tailscale"},
        "egress": {"read_timeout_secs": 18446744073709551615, "connect_timeout_secs": 0},
        "mcp": {"poll_interval_secs": 0}}"#;
    let (c, d) = load(text);
    assert!(c.is_none());
    let all = d.to_string();
    for want in [
        "identity: duplicate key \"identity\"",
        "egress.read_timeout_secs: 18446744073709551615 is out of range: read_timeout_secs takes 1 to 3600",
        "egress.connect_timeout_secs: 0 is out of range",
        "mcp.poll_interval_secs: 0 is out of range",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn oauth_endpoints_are_checked_even_without_a_connector_url() {
    let text = r#"{"connectors": {"servers": {"x": {"protocol": "http",
        "auth": {"type": "oauth2_authorization_code", "client_id": "c", "scopes": [],
                 "authorization_url": "/authorize", "token_url": "ftp://as.example.com/t"}}}}}"#;
    let (c, d) = load(text);
    assert!(c.is_none());
    let all = d.to_string();
    assert!(
        all.contains(
            "connectors.servers.x.auth.authorization_url: \"/authorize\" is not a valid URL"
        ),
        "{all}"
    );
    assert!(
        all.contains(
            "connectors.servers.x.auth.token_url: \"ftp://as.example.com/t\" is not an http"
        ),
        "{all}"
    );
}

#[test]
fn urls_in_messages_never_show_their_credentials() {
    let text = r#"{"connectors": {"servers": {
        "a": {"protocol": "http", "url": "ftp://user:PASSWORD1@a.example.com/"},
        "b": {"protocol": "http", "url": "http://user:PASSWORD2@[bad/"},
        "c": {"protocol": "http", "url": "https://c.example.com",
              "auth": {"type": "oauth2_client_credentials", "client_id": "c", "client_secret": "s",
                       "token_url": "ftp://id:PASSWORD3@as.example.com/t"}},
        "d": {"protocol": "http", "url": "http://user:PASS/WORD4@d.example.com/"},
        "e": {"protocol": "http", "url": "user:PASSWORD5@e.example.com"}
    }},
    "http": {"cors_origins": ["https://user:PASSWORD6@tools.example.com",
                              "https://:PASSWORD7@tools.example.com"]}}"#;
    let (_, d) = load(text);
    let all = d.to_string();
    assert!(d.has_errors(), "{all}");
    assert!(
        all.contains("cors_origins[1]"),
        "a password alone is refused too:\n{all}"
    );
    for secret in [
        "PASSWORD1",
        "PASSWORD2",
        "PASSWORD3",
        "WORD4",
        "PASSWORD5",
        "PASSWORD6",
        "PASSWORD7",
    ] {
        assert!(!all.contains(secret), "{secret} shown:\n{all}");
    }
}

#[test]
fn an_empty_deprecated_mcp_host_list_does_not_turn_the_guard_off() {
    let (c, d) = load(r#"{"mcp": {"allowed_hosts": []}}"#);
    let c = c.expect("loads, with a warning");
    assert_eq!(c.http.allowed_hosts, None, "the Host check stays on");
    let all = d.to_string();
    assert!(all.contains("mcp.allowed_hosts"), "{all}");
    assert!(all.contains("ignored"), "{all}");

    let (c, _) = load(r#"{"mcp": {"allowed_hosts": ["gw.internal"]}}"#);
    assert_eq!(
        c.expect("loads").http.allowed_hosts,
        Some(vec!["gw.internal".to_owned()])
    );
}

#[test]
fn client_credentials_take_a_secret_or_a_key_and_discovered_clients_a_secret_only_with_an_id() {
    let with = |auth: &str| {
        format!(
            r#"{{"connectors": {{"servers": {{"m": {{"protocol": "mcp", "url": "https://mcp.example.com/mcp", "auth": {auth}}}}}}}}}"#
        )
    };
    for ok in [
        r#"{"type": "oauth2_client_credentials", "client_id": "c", "client_secret": "s"}"#,
        r#"{"type": "oauth2_client_credentials", "client_id": "c", "private_key": "k"}"#,
        r#"{"type": "oauth2_dcr", "client_id": "c", "client_secret": "s"}"#,
        r#"{"type": "oauth2_dcr", "client_metadata_url": "https://portcullis.example/client.json"}"#,
    ] {
        let (c, d) = load(&with(ok));
        assert!(c.is_some() && errors(&d).is_empty(), "{ok}: {d}");
    }
    for (bad, says) in [
        (
            r#"{"type": "oauth2_client_credentials", "client_id": "c"}"#,
            "exactly one of client_secret",
        ),
        (
            r#"{"type": "oauth2_client_credentials", "client_id": "c", "client_secret": "s", "private_key": "k"}"#,
            "exactly one of client_secret",
        ),
        (
            r#"{"type": "oauth2_dcr", "client_secret": "s"}"#,
            "add its client_id too",
        ),
    ] {
        let (c, d) = load(&with(bad));
        assert!(c.is_none(), "{bad}");
        assert!(d.to_string().contains(says), "{bad}: {d}");
    }
}
