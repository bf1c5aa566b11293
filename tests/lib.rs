//! Harness for Portcullis' end-to-end tests: starts the real `portcullis` binary and the
//! peers it talks to, all on loopback.
//!
//! # Layout
//!
//! - [`Host`]: the built binary on an ephemeral port with its own data directory; its
//!   stderr (the logs) is kept for assertions.
//! - [`whois`]: a stand-in for tailscaled's LocalAPI that serves the real
//!   `GET /localapi/v0/whois?addr=` request and JSON shape over a Unix socket.
//! - [`upstream`]: a loopback HTTP API that echoes what it received, redirects, streams
//!   large bodies, and counts hits.
//! - [`fixture`]: a scripted upstream standing in for a provider's API (recorded
//!   responses per path, every request kept).
//! - [`oidc`]: the `oidc-provider` peer (npm), a real OAuth 2.0 authorization server.
//! - [`conformance`]: the official MCP conformance suite and the reference upstream
//!   its server scenarios need (Node 22 from npm).
//! - [`raw`]: raw HTTP/1.1 requests, for paths a URL library would normalise.
//! - [`mcp_server`]: an rmcp MCP server (streamable HTTP) as an upstream;
//!   [`legacy_server`]: a minimal one on the legacy HTTP+SSE transport that checks the
//!   token on every request; [`peers_mcp`]: server-everything and the Python SDK agent.
//! - [`postgres`]: a real PostgreSQL server (Debian's package) in a temporary folder;
//!   [`balancer`]: a round-robin TCP load balancer in front of several replicas.

pub mod balancer;
pub mod conformance;
pub mod expiry;
pub mod fixture;
pub mod legacy_server;
pub mod mcp_server;
pub mod oidc;
pub mod peers_mcp;
pub mod postgres;
pub mod raw;
pub mod upstream;
pub mod whois;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits until a line of `output` (a child's stdout or stderr) is one that `ready`
/// accepts and returns what `ready` made of it; fails when the child exits first or
/// `within` passes. The rest of the output is drained, so the child never blocks on a
/// full pipe.
pub fn wait_ready<T: Send + 'static>(
    child: &mut Child,
    output: impl std::io::Read + Send + 'static,
    ready: impl Fn(&str) -> Option<T> + Send + 'static,
    within: Duration,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if let Some(v) = ready(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let deadline = Instant::now() + within;
    loop {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(50)) {
            return Ok(v);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("did not start in {} s", within.as_secs()));
        }
    }
}

/// The workspace root (tests run with the package directory as cwd).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The verified providers, as `cargo xtask plugins` builds them into `registry/`: the
/// plugin workspace's members outside `testing/` (one list, in `plugins/Cargo.toml`).
pub fn verified_providers() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("plugins/Cargo.toml"))
        .expect("plugins/Cargo.toml");
    let manifest: toml::Table = toml::from_str(&text).expect("plugins/Cargo.toml parses");
    manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .filter_map(toml::Value::as_str)
        .filter(|m| !m.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// A registry folder holding copies of the given verified providers' entries.
pub fn registry_copy<S: AsRef<str>>(providers: &[S]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("registry dir");
    for id in providers.iter().map(AsRef::as_ref) {
        let from = workspace().join("registry").join(id);
        let to = dir.path().join(id);
        std::fs::create_dir_all(&to).expect("entry");
        for f in ["plugin.toml", "plugin.wasm"] {
            std::fs::copy(from.join(f), to.join(f)).expect("copy registry entry");
        }
    }
    dir
}

/// The `portcullis` binary: `$PORTCULLIS_BIN`, else the one beside this test binary.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("PORTCULLIS_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/e2e-<hash> → target/<profile>/portcullis
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("portcullis");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p portcullis` (the README's test command does)",
        bin.display()
    );
    bin
}

/// The `portcullis` binary with none of the environment's Portcullis settings (so a
/// developer's own key or config never leaks into a test) and no colour.
pub fn portcullis() -> Command {
    without_settings(Command::new(binary()))
}

/// `portcullis` started by `sh` after `ulimit -v` (the address space limit, in bytes).
fn portcullis_with_address_space(bytes: u64) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", bytes >> 10))
        .arg(binary());
    without_settings(cmd)
}

fn without_settings(mut cmd: Command) -> Command {
    for var in [
        "PORTCULLIS_MASTER_KEY",
        "PORTCULLIS_CONFIG",
        "PORTCULLIS_LISTEN",
        "PORTCULLIS_DATA_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A running `portcullis serve`.
pub struct Host {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

/// What to start a host with.
#[derive(Clone, Default)]
pub struct HostOptions {
    pub env: Vec<(String, String)>,
    /// Reuse this data directory (restart tests) instead of a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Variables the host must not see (the harness sets `RUST_LOG` and `NO_COLOR`).
    pub env_remove: Vec<String>,
    /// `--listen`; default `127.0.0.1:0`.
    pub listen: Option<String>,
    /// Start under `ulimit -v` with this many bytes of address space.
    pub address_space_limit: Option<u64>,
    /// Start without `--config`: the saved config is used (the data directory's, or the
    /// shared vault's with a database URL), and the config text given is ignored.
    pub saved_config: bool,
}

impl Host {
    pub fn start(config: &str) -> Host {
        Self::start_with(config, HostOptions::default())
    }

    pub fn start_with(config: &str, opts: HostOptions) -> Host {
        Self::try_start(config, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a host; `Err` carries its stderr if it exits instead of listening.
    pub fn try_start(config: &str, opts: HostOptions) -> Result<Host, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("portcullis.hujson");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("stderr.log");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let mut cmd = match opts.address_space_limit {
            Some(bytes) => portcullis_with_address_space(bytes),
            None => portcullis(),
        };
        cmd.arg("serve");
        if !opts.saved_config {
            cmd.arg("--config").arg(&config_path);
        }
        cmd.arg("--listen")
            .arg(opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).expect("log file"));
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        for k in &opts.env_remove {
            cmd.env_remove(k);
        }
        let mut child = cmd.spawn().expect("spawn portcullis");
        let stdout = child.stdout.take().expect("stdout");
        let ready = wait_ready(
            &mut child,
            stdout,
            |line| {
                line.strip_prefix("portcullis listening on http://")
                    .map(|a| a.trim().to_owned())
            },
            Duration::from_secs(30),
        );
        match ready {
            Ok(addr) => Ok(Host {
                child: Some(child),
                addr: addr.parse().expect("listen addr"),
                dir,
                config_path,
                log_path,
            }),
            Err(e) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                Err(format!("portcullis {e} before listening:\n{log}"))
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the host logged so far.
    /// The host's log so far. The host writes its log from a thread of its own, a
    /// moment after a line is made (a request's line may land after its answer), so
    /// this waits until the log has stopped growing for a little while (at most 2 s).
    pub fn logs(&self) -> String {
        let read = || std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let until = Instant::now() + Duration::from_secs(2);
        let mut text = read();
        loop {
            std::thread::sleep(Duration::from_millis(25));
            let now = read();
            if now.len() == text.len() || Instant::now() > until {
                return now;
            }
            text = now;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Replaces the config file (atomically, as editors and deploy tools do).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join("portcullis.hujson.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.config_path).expect("rename");
    }

    /// SIGTERM and wait; returns the logs.
    pub fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.logs()
    }

    /// Waits until the log contains `needle` (bounded).
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("log never contained {needle:?}:\n{}", self.logs());
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP client that connects from `local` (a 127.0.0.0/8 address), so a whois
/// stand-in can tell test callers apart.
pub fn client_from(local: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().expect("ip"))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
}

pub fn client() -> reqwest::Client {
    client_from("127.0.0.1")
}

/// `GET url` from 127.0.0.1.
pub async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.expect("request")
}

/// `/metrics` as the caller at `local` reads it (they need `admin` or `read_metrics`).
pub async fn metrics_from(host: &Host, local: &str) -> String {
    let resp = client_from(local)
        .get(host.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200, "{local} may not read /metrics");
    resp.text().await.expect("metrics text")
}

/// `portcullis_plugin_calls_total` for one plugin, hook and outcome (0 when absent).
fn plugin_calls(metrics: &str, plugin: &str, hook: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_plugin_calls_total{"))
        .filter(|l| {
            l.contains(&format!("plugin=\"{plugin}\""))
                && l.contains(&format!("hook=\"{hook}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// Fails unless `/metrics` (read from 127.0.0.1) counts, for `plugin`, each `(hook,
/// outcome, calls)` of `expected`.
pub async fn assert_plugin_calls(host: &Host, plugin: &str, expected: &[(&str, &str, u64)]) {
    let metrics = metrics_from(host, "127.0.0.1").await;
    for &(hook, outcome, calls) in expected {
        assert_eq!(
            plugin_calls(&metrics, plugin, hook, outcome),
            calls,
            "{plugin} {hook} {outcome}:\n{metrics}"
        );
    }
}

/// The status of `GET url` from 127.0.0.1.
pub async fn status_of(url: &str) -> u16 {
    get(url).await.status().as_u16()
}

/// The status and error body of `GET url` from 127.0.0.1 (see [`error_of`]).
pub async fn error_at(url: &str) -> (u16, String, String) {
    error_of(get(url).await).await
}

/// `GET url` from 127.0.0.1, parsed as JSON (the echo upstream's answers, `/api/whoami`).
pub async fn get_json(url: &str) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON body")
}

/// The parsed `{"error": {"code", "message"}}` body.
pub async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .expect("error.message")
        .to_owned();
    (status, code, message)
}

/// A grant block giving `src` the listed connector patterns (and admin if asked).
pub fn grant(src: &str, patterns: &[&str], admin: bool) -> serde_json::Value {
    let mut caps = vec![serde_json::json!({"connectors": patterns})];
    if admin {
        caps.push(serde_json::json!({"role": "admin"}));
    }
    serde_json::json!({"src": [src], "app": {"tailscale.com/cap/aperture": caps}})
}

/// A loopback port that refuses connections while this lives. It is bound but never
/// listens, so no server another test starts meanwhile can take it (a port found free
/// and let go can be, and then answers in its place).
pub struct RefusedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn refused_port() -> RefusedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    RefusedPort {
        _socket: socket,
        port,
    }
}

/// An MCP agent built with rmcp's client, counting `notifications/tools/list_changed`.
#[derive(Clone, Default)]
pub struct Agent {
    pub tools_changed: std::sync::Arc<tokio::sync::Notify>,
}

impl rmcp::ClientHandler for Agent {
    async fn on_tool_list_changed(
        &self,
        _cx: rmcp::service::NotificationContext<rmcp::service::RoleClient>,
    ) {
        self.tools_changed.notify_one();
    }
}

/// Connects an rmcp agent to `url` (streamable HTTP).
pub async fn mcp_agent(
    url: &str,
) -> rmcp::service::RunningService<rmcp::service::RoleClient, Agent> {
    mcp_agent_from(url, "127.0.0.1").await
}

/// An rmcp agent speaking MCP 2026-07-28: `server/discover` instead of `initialize`, no
/// session, every request self-contained, notifications through `subscriptions/listen`.
pub async fn mcp_agent_stateless(
    url: &str,
) -> rmcp::service::RunningService<rmcp::service::RoleClient, Agent> {
    use rmcp::model::ProtocolVersion;
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
        client_from("127.0.0.1"),
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    Agent::default()
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("the MCP agent discovers the server")
}

/// [`mcp_agent`] connecting from `local` (a 127.0.0.0/8 address a whois stand-in knows).
pub async fn mcp_agent_from(
    url: &str,
    local: &str,
) -> rmcp::service::RunningService<rmcp::service::RoleClient, Agent> {
    use rmcp::ServiceExt as _;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
        client_from(local),
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    Agent::default()
        .serve(transport)
        .await
        .expect("the MCP agent connects and initializes")
}
