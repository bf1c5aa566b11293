//! The `oidc-provider` peer (npm; `tests/peers/`): a real OAuth 2.0 authorization server
//! run as a child process on loopback. `npm ci` in `tests/peers` must have run (the
//! README's test command does it).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Client credentials the peer knows (see `tests/peers/oidc/server.mjs`).
pub const CC_CLIENT: &str = "portcullis-cc";
pub const CC_SECRET: &str = "cc-secret-value-1234567890";

pub struct Oidc {
    child: Child,
    pub issuer: String,
}

impl Oidc {
    /// Starts the peer; `access_ttl` is the lifetime of the access tokens it issues.
    /// A peer that has not said it is ready in 30 s (seen once under heavy load, never
    /// reproduced) is killed and a fresh one started, once.
    pub fn start(access_ttl: u64) -> Oidc {
        Self::start_with(access_ttl, true)
    }

    /// As [`Oidc::start`]; `rotate_refresh_tokens: false` keeps each refresh token valid
    /// after use, as many providers do.
    pub fn start_with(access_ttl: u64, rotate_refresh_tokens: bool) -> Oidc {
        // The helpers below build their own clients.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let peers = crate::workspace().join("tests").join("peers");
        assert!(
            peers.join("node_modules").join("oidc-provider").exists(),
            "the oidc-provider peer is not installed: run `npm ci --prefix tests/peers` (the README's test command does)"
        );
        match Self::try_start(&peers, access_ttl, rotate_refresh_tokens) {
            Ok(oidc) => oidc,
            Err(e) => {
                eprintln!("{e}; starting a fresh oidc-provider peer");
                Self::try_start(&peers, access_ttl, rotate_refresh_tokens)
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }

    fn try_start(
        peers: &std::path::Path,
        access_ttl: u64,
        rotate_refresh_tokens: bool,
    ) -> Result<Oidc, String> {
        let mut child = Command::new("node")
            .arg(peers.join("oidc").join("server.mjs"))
            .env("OIDC_ACCESS_TTL", access_ttl.to_string())
            .env(
                "OIDC_ROTATE_REFRESH_TOKENS",
                if rotate_refresh_tokens { "1" } else { "0" },
            )
            // Stdin stays open: the peer exits when it closes, so it never outlives us.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stdout = child.stdout.take().expect("stdout");
        // From here on the peer is killed on every way out, a panic included.
        let mut oidc = Oidc {
            child,
            issuer: String::new(),
        };
        let ready = crate::wait_ready(
            &mut oidc.child,
            stdout,
            |line| {
                line.strip_prefix("OIDC_READY ")
                    .map(|u| u.trim().to_owned())
            },
            Duration::from_secs(30),
        );
        match ready {
            Ok(issuer) => {
                oidc.issuer = issuer;
                Ok(oidc)
            }
            Err(e) if e.starts_with("exited") => panic!("oidc-provider peer {e}"),
            Err(e) => Err(format!("oidc-provider peer {e}")),
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// The peer's token-endpoint statistics (see `server.mjs`).
    async fn token_stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/__test/token-requests", self.issuer))
            .await
            .expect("peer admin")
            .json()
            .await
            .expect("json")
    }

    /// Token-endpoint requests the peer has seen.
    pub async fn token_requests(&self) -> u64 {
        self.token_stats().await["total"].as_u64().expect("total")
    }
}

/// The confidential auth-code client's secret, used here only to introspect tokens.
pub const WEB_CLIENT: &str = "portcullis-web";
pub const WEB_SECRET: &str = "web-secret-abcdef123456";

impl Oidc {
    /// Adds (or replaces) a client at runtime, e.g. once the host's callback URL is known.
    pub async fn add_client(&self, metadata: serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/__test/clients", self.issuer))
            .json(&metadata)
            .send()
            .await
            .expect("peer admin");
        assert_eq!(
            resp.status(),
            201,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// Per-route request counts (`token`, `registration`, `revocation`, ...).
    pub async fn route_hits(&self) -> serde_json::Value {
        reqwest::get(format!("{}/__test/requests", self.issuer))
            .await
            .expect("peer admin")
            .json()
            .await
            .expect("json")
    }

    /// Token-endpoint requests with this grant type since start or the last reset.
    pub async fn grants_of(&self, grant_type: &str) -> u64 {
        self.token_stats().await["by_grant_type"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    pub async fn reset(&self) {
        reqwest::Client::new()
            .post(format!("{}/__test/reset", self.issuer))
            .send()
            .await
            .expect("peer admin");
    }

    /// Plays the user's browser from the authorize URL through the peer's login and
    /// consent pages to the redirect back to Portcullis, which it returns unvisited.
    pub async fn authorize(&self, auth_url: &str, account: &str) -> String {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("client");
        let absolute = |loc: &str| {
            if loc.starts_with('/') {
                format!("{}{loc}", self.issuer)
            } else {
                loc.to_owned()
            }
        };
        let mut url = auth_url.to_owned();
        for _ in 0..12 {
            let resp = browser.get(&url).send().await.expect("authorize step");
            let status = resp.status();
            let Some(loc) = resp.headers().get("location") else {
                panic!(
                    "authorize step {url} answered {status} without a redirect: {}",
                    resp.text().await.unwrap_or_default()
                );
            };
            let loc = absolute(loc.to_str().expect("ascii location"));
            if !loc.starts_with(&format!("{}/interaction/", self.issuer)) {
                return loc;
            }
            let page = browser
                .get(&loc)
                .send()
                .await
                .expect("page")
                .text()
                .await
                .unwrap_or_default();
            let form: Vec<(&str, &str)> = if page.contains("name=\"login\"") {
                vec![("prompt", "login"), ("login", account), ("password", "any")]
            } else {
                vec![("prompt", "consent")]
            };
            let resp = browser
                .post(&loc)
                .form(&form)
                .send()
                .await
                .expect("interaction");
            url = absolute(
                resp.headers()
                    .get("location")
                    .expect("interaction redirect")
                    .to_str()
                    .expect("ascii"),
            );
        }
        panic!("the authorization did not come back to the client");
    }

    /// What a resource server needs to check this server's tokens.
    pub fn introspection(&self) -> crate::mcp_server::Expect {
        crate::mcp_server::Expect::Introspect {
            url: format!("{}/token/introspection", self.issuer),
            client: WEB_CLIENT.into(),
            secret: WEB_SECRET.into(),
        }
    }

    /// Introspects a token: `(active, sub)`.
    pub async fn introspect(&self, token: &str) -> (bool, Option<String>) {
        let url = format!("{}/token/introspection", self.issuer);
        introspect(&url, WEB_CLIENT, WEB_SECRET, token)
            .await
            .expect("introspection")
    }
}

/// Asks an RFC 7662 introspection endpoint about `token` with the client's basic
/// credentials: `(active, sub)`.
pub async fn introspect(
    url: &str,
    client: &str,
    secret: &str,
    token: &str,
) -> reqwest::Result<(bool, Option<String>)> {
    let v: serde_json::Value = reqwest::Client::new()
        .post(url)
        .basic_auth(client, Some(secret))
        .form(&[("token", token)])
        .send()
        .await?
        .json()
        .await?;
    Ok((
        v["active"].as_bool().unwrap_or(false),
        v["sub"].as_str().map(str::to_owned),
    ))
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
