//! What `serve` finds wrong before it takes a request: a data directory that is a file,
//! a port in use (found before a new data directory gets its master key), an identity
//! source that cannot work where it listens, and errors that say their cause once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use portcullis_e2e::{Host, portcullis};
use serde_json::json;

/// Runs `portcullis serve` with `args`, expecting it to exit by itself within 30 s;
/// returns its exit code and stderr.
fn serve_fails(args: &[&str]) -> (i32, String) {
    let mut child = portcullis()
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("portcullis serve {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_port_in_use_is_found_before_a_new_data_directory_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let (code, err) = serve_fails(&["--listen", &addr, "--data-dir", &data_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")),
        "says which address: {err}"
    );
    assert!(
        !data.join("master.key").exists(),
        "a master key was created for a host that could not start"
    );
}

#[test]
fn a_data_directory_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    std::fs::write(&file, "").expect("file");
    let file_arg = file.display().to_string();
    let (code, err) = serve_fails(&["--listen", "127.0.0.1:0", "--data-dir", &file_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is a file") && err.contains("--data-dir"),
        "{err}"
    );
}

#[test]
fn an_error_says_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.hujson").display().to_string();
    let data = dir.path().join("data").display().to_string();
    let (code, err) = serve_fails(&[
        "--config",
        &missing,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the OS error once: {err}"
    );
}

#[test]
fn serve_headers_listens_on_loopback_only_and_says_what_it_trusts() {
    let config = json!({"identity": {"mode": "serve-headers"}}).to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.hujson");
    std::fs::write(&path, &config).expect("config");
    let path_arg = path.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let (code, err) = serve_fails(&[
        "--config",
        &path_arg,
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        &data,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("serve-headers") && err.contains("loopback") && err.contains("0.0.0.0"),
        "{err}"
    );

    // On loopback it starts, and warns that local processes can claim any identity.
    let host = Host::start(&config);
    assert!(
        host.logs()
            .contains("any process on this machine can claim any tailnet identity"),
        "{}",
        host.logs()
    );
}

/// A host on every address cannot take `serve-headers` later either: a save through the
/// admin API is refused (it would lock every caller out, the admin saving included) and
/// so is a reload of an edited file, which keeps the config in force.
#[tokio::test]
async fn serve_headers_is_refused_by_a_save_or_reload_on_a_non_loopback_listener() {
    let config = crate::loopback_config(json!({}), crate::admin_everything());
    let host = Host::start_with(
        &config,
        portcullis_e2e::HostOptions {
            listen: Some("0.0.0.0:0".into()),
            ..Default::default()
        },
    );
    let http = portcullis_e2e::client();
    let current: serde_json::Value = http
        .get(host.url("/api/config"))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("json");
    let mut changed = current["config"].clone();
    changed["identity"]["mode"] = json!("serve-headers");
    let resp = http
        .put(host.url("/api/config"))
        .json(&json!({"hash": current["hash"], "config": changed}))
        .send()
        .await
        .expect("save");
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.expect("body");
    assert!(
        body.contains("serve-headers") && body.contains("0.0.0.0"),
        "{body}"
    );

    let mut file: serde_json::Value = serde_json::from_str(&config).expect("config");
    file["identity"]["mode"] = json!("serve-headers");
    host.write_config(&file.to_string());
    host.signal("HUP");
    host.wait_for_log("must listen on loopback").await;
    let who = http
        .get(host.url("/api/whoami"))
        .send()
        .await
        .expect("whoami");
    assert_eq!(who.status(), 200, "the previous config keeps serving");
}

/// In `tailscale` mode every request needs tailscaled: without it the host says so at
/// start and `/healthz` is 503 (so nothing routes traffic to it), until it answers.
#[tokio::test]
async fn tailscale_mode_is_not_ready_until_tailscaled_answers() {
    let whois = portcullis_e2e::whois::Whois::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("tailscaled.sock");
    let config = json!({"identity": {"mode": "tailscale", "socket": socket}}).to_string();
    let host = Host::start(&config);
    assert!(
        host.logs().contains("cannot be reached"),
        "said at start: {}",
        host.logs()
    );
    let resp = portcullis_e2e::get(&host.url("/healthz")).await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["error"]["code"], "identity_unavailable");

    // tailscaled comes up (its socket appears): ready within a probe interval or two.
    std::os::unix::fs::symlink(&whois.socket, &socket).expect("socket link");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = portcullis_e2e::get(&host.url("/healthz")).await;
        if resp.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not ready: {:?}",
            resp.text().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(host.logs().contains("answers again"), "{}", host.logs());
}
