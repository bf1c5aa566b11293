//! The vault as seen from outside: tokens persisted sealed (no plaintext in the database
//! file), reused after a restart, and still readable after `rotate-key`.

use portcullis_e2e::oidc::{CC_SECRET, Oidc};
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, HostOptions};
use serde_json::{Value, json};

use crate::client_credentials::cc_connector;
use crate::{admin_everything, loopback_config};

async fn token_via(host: &Host) -> String {
    let e: Value = portcullis_e2e::get_json(&host.url("/v1/connectors/analytics/x")).await;
    e["headers"]["authorization"][0]
        .as_str()
        .expect("auth")
        .trim_start_matches("Bearer ")
        .to_owned()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn tokens_are_sealed_survive_restart_and_key_rotation() {
    let oidc = Oidc::start(3600);
    let up = Upstream::start().await;
    let config = loopback_config(
        cc_connector(&up, &oidc.token_url(), CC_SECRET),
        admin_everything(),
    );
    let data = tempfile::tempdir().expect("data");
    let opts = HostOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };

    let mut host = Host::start_with(&config, opts.clone());
    let token = token_via(&host).await;
    // Persisting happens off the request path; give it a moment, then stop cleanly.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    host.stop();

    let db = std::fs::read(data.path().join("portcullis.redb")).expect("db");
    assert!(
        !contains(&db, &token),
        "access token in plaintext in the database file"
    );
    assert!(
        !contains(&db, CC_SECRET),
        "client secret in the database file"
    );
    let key = std::fs::metadata(data.path().join("master.key")).expect("key file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // A restart reuses the sealed token: no new token request.
    let mut host = Host::start_with(&config, opts.clone());
    assert_eq!(token_via(&host).await, token);
    assert_eq!(oidc.token_requests().await, 1);
    host.stop();

    // Rotate the master key; everything still opens under the new one.
    let old_key = std::fs::read_to_string(data.path().join("master.key")).expect("key");
    let out = std::process::Command::new(portcullis_e2e::binary())
        .arg("rotate-key")
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("PORTCULLIS_MASTER_KEY")
        .output()
        .expect("rotate-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Re-sealed"));
    assert_ne!(
        std::fs::read_to_string(data.path().join("master.key")).expect("key"),
        old_key
    );
    let host = Host::start_with(&config, opts.clone());
    assert_eq!(token_via(&host).await, token);
    assert_eq!(oidc.token_requests().await, 1);
}

#[tokio::test]
async fn wrong_master_key_refuses_to_start() {
    let data = tempfile::tempdir().expect("data");
    let opts = HostOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let config = loopback_config(serde_json::json!({}), admin_everything());
    drop(Host::start_with(&config, opts.clone()));
    let bad = HostOptions {
        env: vec![(
            "PORTCULLIS_MASTER_KEY".into(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        )],
        ..opts
    };
    let err = Host::try_start(&config, bad).err().expect("must not start");
    assert!(err.contains("does not open this vault"), "{err}");
}

#[test]
fn the_data_directory_and_everything_in_it_are_the_hosts_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("nested/data");
    let host = Host::start_with(
        &loopback_config(json!({}), admin_everything()),
        HostOptions {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&dir.path().join("nested")), 0o700);
    assert_eq!(mode(&data.join("portcullis.redb")), 0o600);
    assert_eq!(mode(&data.join("master.key")), 0o600);
    drop(host);
}

/// `kill -9` in the middle of heavy vault writes (secrets set through the API, client
/// credentials tokens minted every second or so) loses no acknowledged write and
/// corrupts nothing: the restarted host opens the vault and serves every secret with the
/// last value it acknowledged (or the one being written when it died).
#[tokio::test]
async fn kill_9_during_heavy_vault_writes_loses_nothing_acknowledged() {
    const NAMES: usize = 8;
    let oidc = Oidc::start(2);
    let up = Upstream::start().await;
    let data = tempfile::tempdir().expect("data");
    let opts = HostOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let plain = loopback_config(
        cc_connector(&up, &oidc.token_url(), CC_SECRET),
        admin_everything(),
    );
    let mut host = Host::start_with(&plain, opts.clone());
    let base = host.url("");

    // Writers: each name's values in order; the last one acknowledged is remembered.
    let writer = |n: usize, base: String| async move {
        let client = portcullis_e2e::client();
        let mut acked: Option<usize> = None;
        // Bounded: 400 writes or 4 s, whichever ends first (the kill ends it sooner).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
        for i in 0..400 {
            if std::time::Instant::now() > until {
                break;
            }
            let resp = client
                .put(format!("{base}/api/secrets/s{n}"))
                .json(&json!({"value": format!("v{i}")}))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 200 => acked = Some(i),
                _ => break,
            }
        }
        (n, acked)
    };
    let writers: Vec<_> = (0..NAMES)
        .map(|n| tokio::spawn(writer(n, base.clone())))
        .collect();
    let traffic = {
        let base = base.clone();
        tokio::spawn(async move {
            let client = portcullis_e2e::client();
            for _ in 0..200 {
                if client
                    .get(format!("{base}/v1/connectors/analytics/x"))
                    .send()
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    host.signal("KILL");
    let mut acked = vec![None; NAMES];
    for w in writers {
        let (n, a) = w.await.expect("writer");
        acked[n] = a;
    }
    let _ = traffic.await;
    assert!(
        acked.iter().all(Option::is_some),
        "writes acknowledged: {acked:?}"
    );
    let _ = host.stop();

    // Restart with connectors that need every secret: the validator finds them all.
    let mut connectors = cc_connector(&up, &oidc.token_url(), CC_SECRET);
    for n in 0..NAMES {
        connectors[format!("s{n}")] = json!({"protocol": "http", "url": up.url(),
            "auth": {"type": "bearer_token", "secret": {"vault": format!("s{n}")}}});
    }
    let host = Host::start_with(&loopback_config(connectors, admin_everything()), opts);
    for (n, last) in acked.iter().enumerate() {
        let last = last.expect("acknowledged");
        let e: Value = portcullis_e2e::get_json(&host.url(&format!("/v1/connectors/s{n}/x"))).await;
        let seen = e["headers"]["authorization"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            seen == format!("Bearer v{last}") || seen == format!("Bearer v{}", last + 1),
            "s{n}: acknowledged v{last}, the vault has {seen}"
        );
    }
    assert!(
        token_via(&host).await.len() > 10,
        "client credentials serve again"
    );
}
