//! The `oidc-provider` peer (npm; `tests/peers/`): a real OAuth 2.0 authorization server
//! run as a child process on loopback. `npm ci` in `tests/peers` must have run (the
//! README's test command does it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Client credentials the peer knows (see `tests/peers/oidc/server.mjs`).
pub const CC_CLIENT: &str = "portcullis-cc";
pub const CC_SECRET: &str = "cc-secret-value-1234567890";

pub struct Oidc {
    child: Child,
    pub issuer: String,
}

impl Oidc {
    /// Starts the peer; `access_ttl` is the lifetime of the access tokens it issues.
    pub fn start(access_ttl: u64) -> Oidc {
        let peers = crate::workspace().join("tests").join("peers");
        assert!(
            peers.join("node_modules").join("oidc-provider").exists(),
            "the oidc-provider peer is not installed: run `npm ci --prefix tests/peers` (the README's test command does)"
        );
        let mut child = Command::new("node")
            .arg(peers.join("oidc").join("server.mjs"))
            .env("OIDC_ACCESS_TTL", access_ttl.to_string())
            // Stdin stays open: the peer exits when it closes, so it never outlives us.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("OIDC_READY ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(issuer) = rx.recv_timeout(Duration::from_millis(100)) {
                return Oidc { child, issuer };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("oidc-provider peer exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "oidc-provider peer did not start in 30 s"
            );
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Token-endpoint requests the peer has seen.
    pub async fn token_requests(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(format!("{}/__test/token-requests", self.issuer))
            .await
            .expect("peer admin")
            .json()
            .await
            .expect("json");
        v["total"].as_u64().expect("total")
    }
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
