//! Config from outside: `portcullis validate`, refusing to start on a bad config, and
//! reload (SIGHUP and file change) swapping snapshots without dropping requests.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, HostOptions, binary, status_of, workspace};
use serde_json::json;

use crate::{admin_everything, loopback_config};

fn validate(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .arg("validate")
        .args(args)
        .output()
        .expect("validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn validate_accepts_every_seed_example() {
    let dir = workspace().join("tests/fixtures/seeds");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seeds") {
        let path = entry.expect("entry").path();
        let (ok, out) = validate(&[path.to_str().expect("utf8")]);
        assert!(ok, "{}: {out}", path.display());
        assert!(out.contains("0 error(s)"), "{out}");
        n += 1;
    }
    assert_eq!(n, 8);
}

#[test]
fn validate_reports_every_problem_with_paths_and_fails_on_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("bad.hujson");
    std::fs::write(
        &file,
        r#"{
          // a typo'd auth field, a bad ID, and an unknown key
          "connectors": {"servers": {
            "github": {"protocol": "http", "url": "https://api.github.com",
                       "auth": {"type": "bearer_token", "secert": "x"}},
            "my_api": {"protocol": "http", "url": "https://a.example"},
          }},
          "basurl": 1,
        }"#,
    )
    .expect("write");
    let (ok, out) = validate(&[file.to_str().expect("utf8")]);
    assert!(!ok);
    assert!(out.contains("error: connectors.servers.github.auth.secert: unknown field \"secert\" in auth of connector \"github\""), "{out}");
    assert!(out.contains("missing field \"secret\""), "{out}");
    assert!(out.contains("connectors.servers.my_api"), "{out}");
    assert!(out.contains("warning: basurl"), "{out}");

    // Warnings alone pass, unless --strict.
    let warn = dir.path().join("warn.hujson");
    std::fs::write(&warn, r#"{"basurl": 1}"#).expect("write");
    assert!(validate(&[warn.to_str().expect("utf8")]).0);
    assert!(!validate(&["--strict", warn.to_str().expect("utf8")]).0);
}

#[test]
fn serve_refuses_a_config_with_a_typo_in_auth() {
    let config = r#"{"identity": {"mode": "loopback"}, "connectors": {"servers": {"github": {"protocol": "http",
        "url": "https://api.github.com", "auth": {"type": "bearer_token", "secert": "x"}}}}}"#;
    let err = Host::try_start(config, HostOptions::default())
        .err()
        .expect("must not start");
    assert!(
        err.contains("connectors.servers.github.auth.secert"),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_missing_environment_secret() {
    let config = r#"{"identity": {"mode": "loopback"}, "connectors": {"servers": {"github": {"protocol": "http",
        "url": "https://api.github.com", "auth": {"type": "bearer_token", "secret": {"env": "PORTCULLIS_TEST_UNSET_TOKEN"}}}}}}"#;
    let err = Host::try_start(config, HostOptions::default())
        .err()
        .expect("must not start");
    assert!(err.contains("PORTCULLIS_TEST_UNSET_TOKEN"), "{err}");
}

#[tokio::test]
async fn secrets_from_the_environment_are_injected() {
    let up = Upstream::start().await;
    let connectors = json!({"api": {"protocol": "http", "url": up.url(), "auth": {"type": "bearer_token", "secret": {"env": "E2E_API_TOKEN"}}}});
    let opts = HostOptions {
        env: vec![("E2E_API_TOKEN".into(), "from-env-777".into())],
        ..Default::default()
    };
    let host = Host::start_with(&loopback_config(connectors, admin_everything()), opts);
    let e: serde_json::Value = portcullis_e2e::get_json(&host.url("/v1/connectors/api/x")).await;
    assert_eq!(
        e["headers"]["authorization"],
        json!(["Bearer from-env-777"])
    );
}

async fn wait_status(host: &Host, path: &str, want: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if status_of(&host.url(path)).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{path} never answered {want}:\n{}", host.logs());
}

#[tokio::test]
async fn reload_on_sighup_and_file_change_without_dropping_requests() {
    let up = Upstream::start().await;
    let one = json!({"a": {"protocol": "http", "url": up.url()}});
    let host = Arc::new(Host::start(&loopback_config(
        one.clone(),
        admin_everything(),
    )));
    assert_eq!(status_of(&host.url("/v1/connectors/a/x")).await, 200);
    assert_eq!(status_of(&host.url("/v1/connectors/b/x")).await, 404);

    // Keep traffic flowing through every reload below; not one request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (host, stop) = (host.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            // Bounded: stops when told, or after 50 000 requests at most.
            while !stop.load(Ordering::Relaxed) && n < 50_000 {
                assert_eq!(
                    status_of(&host.url("/v1/connectors/a/x")).await,
                    200,
                    "request dropped during reload"
                );
                n += 1;
            }
            n
        })
    };

    // File change: connector b appears.
    let mut two = one.clone();
    two["b"] = json!({"protocol": "http", "url": up.url()});
    host.write_config(&loopback_config(two.clone(), admin_everything()));
    wait_status(&host, "/v1/connectors/b/x", 200).await;

    // A bad config is rejected and the old one keeps serving.
    std::fs::write(&host.config_path, r#"{"connectors": {"servers": {"a": {"protocol": "http", "auth": {"type": "bearer_token", "secert": "x"}}}}}"#)
        .expect("write");
    host.wait_for_log("config reload rejected").await;
    assert_eq!(status_of(&host.url("/v1/connectors/b/x")).await, 200);
    assert!(host.logs().contains("secert"));

    // SIGHUP re-reads the (fixed) file: b disappears again.
    let three = loopback_config(one, admin_everything());
    let tmp = host.dir.path().join("staged.hujson");
    std::fs::write(&tmp, &three).expect("write");
    std::fs::copy(&tmp, &host.config_path).expect("copy");
    host.signal("HUP");
    wait_status(&host, "/v1/connectors/b/x", 404).await;

    stop.store(true, Ordering::Relaxed);
    let served = traffic.await.expect("traffic task");
    assert!(served > 0);
}

/// Configs `serve` would refuse: `validate` must refuse each too, at the same path.
/// (What each one breaks, then the path both must name.)
pub(crate) fn broken_corpus() -> Vec<(&'static str, String, &'static str)> {
    let server = |s: serde_json::Value| {
        json!({"identity": {"mode": "loopback"}, "connectors": {"servers": {"x": s}}}).to_string()
    };
    vec![
        (
            "an unset environment variable",
            server(json!({"protocol": "http", "url": "https://a.example.com",
                "auth": {"type": "bearer_token", "secret": {"env": "PORTCULLIS_TEST_NEVER_SET"}}})),
            "connectors.servers.x.auth.secret",
        ),
        (
            "a relative authorization_url",
            server(json!({"protocol": "http",
                "auth": {"type": "oauth2_authorization_code", "client_id": "c", "scopes": [],
                         "authorization_url": "/authorize", "token_url": "https://as.example.com/t"}})),
            "connectors.servers.x.auth.authorization_url",
        ),
        (
            "an unknown provider",
            server(json!({"protocol": "http", "url": "https://slack.com/api", "provider": "slak"})),
            "connectors.servers.x.provider",
        ),
        (
            "an empty client id",
            server(json!({"protocol": "http", "url": "https://a.example.com",
                "auth": {"type": "oauth2_client_credentials", "client_id": "", "client_secret": "s",
                         "token_url": "https://as.example.com/t"}})),
            "connectors.servers.x.auth.client_id",
        ),
        (
            "a missing token_url",
            server(json!({"protocol": "http", "url": "https://a.example.com",
                "auth": {"type": "oauth2_authorization_code", "client_id": "c", "scopes": [],
                         "authorization_url": "https://as.example.com/a"}})),
            "connectors.servers.x.auth.token_url",
        ),
        (
            "a vault secret that does not exist",
            server(json!({"protocol": "http", "url": "https://a.example.com",
                "auth": {"type": "bearer_token", "secret": {"vault": "never_set"}}})),
            "connectors.servers.x.auth.secret",
        ),
        (
            "a timeout out of range",
            json!({"identity": {"mode": "loopback"}, "egress": {"read_timeout_secs": 18446744073709551615u64}}).to_string(),
            "egress.read_timeout_secs",
        ),
        (
            "a duplicate key",
            r#"{"identity": {"mode": "loopback"}, "listen": "127.0.0.1:1", "listen": "127.0.0.1:2"}"#.to_owned(),
            "listen",
        ),
    ]
}

#[test]
fn validate_and_serve_agree_on_a_corpus_of_broken_configs() {
    let reg = portcullis_e2e::registry_copy(&["slack"]);
    let dir = tempfile::tempdir().expect("tmp");
    // A vault that exists (and lacks the secret the corpus names), as serve's would.
    let data = dir.path().join("data");
    let (ok, out) = cli(&["secret", "set", "unrelated"], &data, "value");
    assert!(ok, "{out}");
    for (what, text, path) in broken_corpus() {
        let file = dir.path().join("broken.hujson");
        std::fs::write(&file, &text).expect("write");
        let out = Command::new(binary())
            .arg("validate")
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .arg("--registry")
            .arg(reg.path())
            .env_remove("PORTCULLIS_MASTER_KEY")
            .output()
            .expect("validate");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "validate passed {what}:\n{said}");
        assert!(
            said.contains(&format!("error: {path}:")),
            "validate on {what}:\n{said}"
        );
        let err = Host::try_start(
            &text,
            HostOptions {
                env: vec![(
                    "PORTCULLIS_REGISTRY".into(),
                    reg.path().display().to_string(),
                )],
                ..Default::default()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("serve started with {what}"));
        assert!(
            err.contains(&format!("error: {path}:")),
            "serve on {what}:\n{err}"
        );
    }
}

fn cli(args: &[&str], data: &std::path::Path, stdin: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(binary())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("PORTCULLIS_MASTER_KEY")
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn the_cli_manages_secrets_and_adds_connectors_from_templates_into_the_saved_config() {
    let reg = portcullis_e2e::registry_copy(&["slack"]);
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let registry = ["--registry", reg.path().to_str().expect("utf8")];

    let (ok, out) = cli(&["secret", "set", "gh_pat"], &data, "ghp_from_cli_42\n");
    assert!(ok, "{out}");
    let (ok, out) = cli(&["secret", "list"], &data, "");
    assert!(ok, "{out}");
    assert!(out.contains("gh_pat\tset_at="), "{out}");
    assert!(!out.contains("ghp_from_cli_42"), "{out}");
    let (ok, out) = cli(&["secret", "set", "bad name"], &data, "x");
    assert!(!ok && out.contains("not a valid secret name"), "{out}");

    // Without a client ID the template is refused, naming what to give.
    let mut args = vec!["connector", "add", "--provider", "slack"];
    args.extend(registry);
    let (ok, out) = cli(&args, &data, "");
    assert!(!ok, "{out}");
    assert!(
        out.contains("client_id") && out.contains("--client-id"),
        "{out}"
    );

    args.extend(["--client-id", "123.456", "--client-secret-stdin"]);
    let (ok, out) = cli(&args, &data, "slack_cli_secret\n");
    assert!(ok, "{out}");
    assert!(out.contains("/aperture/auth/Slack/callback"), "{out}");
    let saved = std::fs::read_to_string(data.join("portcullis.hujson")).expect("saved config");
    assert!(
        saved.contains("https://slack.com/oauth/v2/authorize"),
        "{saved}"
    );
    assert!(
        saved.contains(r#""vault": "Slack_client_secret""#),
        "{saved}"
    );
    assert!(!saved.contains("slack_cli_secret"), "{saved}");

    // `serve` with no --config picks the saved config up.
    let up = Upstream::start().await;
    let _ = up;
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(registry)
        .env_remove("PORTCULLIS_MASTER_KEY")
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("listening line");
    let addr = line
        .trim()
        .trim_start_matches("portcullis listening on ")
        .to_owned();
    let list = portcullis_e2e::get_json(&format!("{addr}/api/connectors")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(list["connectors"][0]["id"], "Slack", "{list}");
    // Deny by default: (loopback) is admin, but nobody is granted the new connector yet.
    assert_eq!(list["connectors"][0]["status"], "No access", "{list}");

    // A secret in use is not removed; an unused one is.
    let (ok, out) = cli(&["secret", "rm", "Slack_client_secret"], &data, "");
    assert!(
        !ok && out.contains("in use by connectors.servers.Slack.auth.client_secret"),
        "{out}"
    );
    let (ok, out) = cli(&["secret", "rm", "gh_pat"], &data, "");
    assert!(ok, "{out}");
    for secret in ["ghp_from_cli_42", "slack_cli_secret"] {
        let leaked = std::fs::read_dir(&data)
            .expect("data")
            .flatten()
            .filter(|e| e.path().is_file())
            .any(|e| {
                std::fs::read(e.path())
                    .is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
            });
        assert!(!leaked, "{secret} in plaintext in the data directory");
    }
}

/// `connector add` makes every kind of connector a template offers: a provider's own
/// static credential instead of OAuth (a Discord bot token), provider inputs that fill
/// the sign-in URLs (Microsoft's tenant) and scopes of the operator's choosing; what the
/// template cannot use is refused in the command line's own terms, before anything is
/// saved.
#[test]
fn the_cli_adds_static_credential_and_provider_input_connectors() {
    let reg = portcullis_e2e::registry_copy(&["discord", "microsoft"]);
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let add = |extra: &[&str], stdin: &str| {
        let mut args = vec!["connector", "add", "--registry"];
        args.push(reg.path().to_str().expect("utf8"));
        args.extend(extra);
        cli(&args, &data, stdin)
    };
    let saved = || std::fs::read_to_string(data.join("portcullis.hujson")).unwrap_or_default();

    // Refused before anything is written.
    for (extra, stdin, says) in [
        (
            &["--provider", "discord", "--client-id", "c", "--token-stdin"][..],
            "t\n",
            "cannot be used with",
        ),
        (
            &["--provider", "microsoft", "--token-stdin"][..],
            "t\n",
            "OAuth only: give --client-id",
        ),
        (
            &["--provider", "discord", "--token-stdin", "--scope", "bot"][..],
            "t\n",
            "takes no --scope",
        ),
        (
            &[
                "--provider",
                "microsoft",
                "--client-id",
                "c",
                "--provider-var",
                "tenant=a/b",
            ][..],
            "",
            "--provider-var tenant \"a/b\" goes into",
        ),
        (
            &[
                "--provider",
                "microsoft",
                "--client-id",
                "c",
                "--provider-var",
                "tenant",
            ][..],
            "",
            "expected NAME=VALUE",
        ),
    ] {
        let (ok, out) = add(extra, stdin);
        assert!(!ok, "{extra:?}: {out}");
        assert!(out.contains(says), "{extra:?}: {out}");
        assert_eq!(saved(), "", "{extra:?} saved something");
    }

    let (ok, out) = add(
        &["--provider", "discord", "--token-stdin"],
        "bot_cli_token\n",
    );
    assert!(ok, "{out}");
    assert!(
        !out.contains("callback"),
        "a bot token needs no redirect URI: {out}"
    );
    let config = saved();
    assert!(config.contains(r#""scheme": "Bot""#), "{config}");
    assert!(config.contains(r#""vault": "Discord_secret""#), "{config}");
    assert!(!config.contains("bot_cli_token"), "{config}");

    let (ok, out) = add(
        &[
            "--provider",
            "microsoft",
            "--client-id",
            "app-1",
            "--provider-var",
            "tenant=contoso.onmicrosoft.com",
            "--scope",
            "offline_access",
            "--scope",
            "Mail.Read",
            "--description",
            "Contoso mail",
        ],
        "",
    );
    assert!(ok, "{out}");
    assert!(out.contains("/aperture/auth/Microsoft/callback"), "{out}");
    let config = saved();
    for line in [
        r#""token_url": "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token""#,
        r#""scopes": ["offline_access", "Mail.Read"]"#,
        r#""tenant": "contoso.onmicrosoft.com""#,
        r#""description": "Contoso mail""#,
        r#""client_id": "app-1""#,
    ] {
        assert!(config.contains(line), "{line} not in\n{config}");
    }
}

/// Turning `egress.allow_loopback` off by reload must stop traffic to a host name that
/// resolves to loopback at once, pooled keep-alive connections included.
#[tokio::test]
async fn turning_loopback_off_by_reload_drops_pooled_connections() {
    let up = Upstream::start().await;
    let by_name =
        json!({"a": {"protocol": "http", "url": format!("http://localhost:{}", up.addr.port())}});
    let host = Host::start(&loopback_config(by_name.clone(), admin_everything()));
    for _ in 0..3 {
        assert_eq!(status_of(&host.url("/v1/connectors/a/x")).await, 200);
    }
    let mut off: serde_json::Value =
        serde_json::from_str(&loopback_config(by_name, admin_everything())).expect("config");
    off["egress"]["allow_loopback"] = json!(false);
    host.write_config(&off.to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let s = status_of(&host.url("/v1/connectors/a/x")).await;
        if s != 200 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status, 502, "refused by egress after the reload");
    // Nothing more reached the upstream once the reload was in force.
    let after = up.hits();
    assert_eq!(status_of(&host.url("/v1/connectors/a/x")).await, status);
    assert_eq!(up.hits(), after);
}
