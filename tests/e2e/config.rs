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
    assert!(out.contains("missing field `secret`"), "{out}");
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
