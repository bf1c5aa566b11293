//! The MCP peers from the official SDKs' ecosystems: `@modelcontextprotocol/server-everything`
//! (npm, the reference MCP server) as an upstream, and the Python `mcp` SDK
//! (`tests/peers/mcp/agent.py`) and the TypeScript SDK (`@modelcontextprotocol/client`,
//! `tests/peers/mcp/agent.mjs`) as agents taking the same operations.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// server-everything on a loopback port, in streamable HTTP mode or in the legacy
/// HTTP+SSE mode (MCP 2024-11-05); killed on drop.
pub struct Everything {
    child: Child,
    pub port: u16,
    mode: Mode,
}

/// Which transport server-everything serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Streamable HTTP at `/mcp`.
    Streamable,
    /// HTTP+SSE: the event stream at `/sse`, messages posted to `/message`.
    LegacySse,
}

impl Everything {
    pub fn start() -> Everything {
        Self::start_on(Mode::Streamable, None)
    }

    /// Starts it in `mode`, on `port` or a free one.
    pub fn start_on(mode: Mode, port: Option<u16>) -> Everything {
        let peers = crate::workspace().join("tests").join("peers");
        let entry =
            peers.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        assert!(
            entry.exists(),
            "server-everything is not installed: run `npm ci --prefix tests/peers` (the README's test command does)"
        );
        // It takes its port from PORT and cannot report one it was given as 0.
        let port = port.unwrap_or_else(|| pgserver::free_port().expect("free port"));
        let (arg, ready) = match mode {
            Mode::Streamable => ("streamableHttp", "listening on port"),
            Mode::LegacySse => ("sse", "running on port"),
        };
        let mut child = Command::new("node")
            .arg(entry)
            .arg(arg)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stderr = child.stderr.take().expect("stderr");
        // From here on the server is killed on every way out, a panic included.
        let mut me = Everything { child, port, mode };
        crate::wait_ready(
            &mut me.child,
            stderr,
            move |line| line.contains(ready).then_some(()),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("server-everything {e}"));
        me
    }

    pub fn url(&self) -> String {
        match self.mode {
            Mode::Streamable => format!("http://127.0.0.1:{}/mcp", self.port),
            Mode::LegacySse => format!("http://127.0.0.1:{}/sse", self.port),
        }
    }

    /// Stops it; a later [`Everything::start_on`] with the same port brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MCP server written in Python on a loopback port: with the official SDK
/// (`tests/peers/mcp/server.py`) or with fastmcp (`fastmcp_server.py`). It exits when
/// dropped (its stdin closes).
pub struct PythonServer {
    child: Child,
    pub port: u16,
}

impl PythonServer {
    /// The official SDK's server.
    pub fn start() -> PythonServer {
        Self::start_script("server.py")
    }

    /// The fastmcp server.
    pub fn fastmcp() -> PythonServer {
        Self::start_script("fastmcp_server.py")
    }

    fn start_script(script: &str) -> PythonServer {
        let py = python();
        assert!(
            py.exists(),
            "the Python MCP SDK venv is missing at {}: run scripts/test.sh (the README's test command) or set PORTCULLIS_TEST_PYTHON",
            py.display()
        );
        let port = pgserver::free_port().expect("free port");
        let mut child = Command::new(py)
            .arg(crate::workspace().join("tests/peers/mcp").join(script))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the Python MCP server {script}: {e}"));
        // Ready when it accepts connections (uvicorn binds after start-up).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return PythonServer { child, port };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the Python MCP server {script} exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the Python MCP server {script} did not listen in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_v1() -> PathBuf {
    std::env::var_os("PORTCULLIS_TEST_PYTHON_V1")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("target/pyvenv1/bin/python"))
}

fn python() -> PathBuf {
    std::env::var_os("PORTCULLIS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("target/pyvenv/bin/python"))
}

/// Runs the Python SDK agent against `url` with `ops`, negotiating with the
/// `initialize` handshake; returns its `results` array.
pub async fn python_agent(url: &str, ops: Value) -> Vec<Value> {
    python_agent_as(url, ops, "legacy").await
}

/// [`python_agent`] with the SDK's negotiation `mode`: `legacy` (the handshake, up to
/// MCP 2025-11-25) or `auto` (`server/discover` first: 2026-07-28 where it is offered).
pub async fn python_agent_as(url: &str, ops: Value, mode: &str) -> Vec<Value> {
    python_agent_output(url, ops, mode).await["results"]
        .as_array()
        .cloned()
        .expect("results")
}

/// The Python agent's whole output: `results`, and `asked`, the requests the server
/// made of the client (`ops` may be `{"client": {...}, "ops": [...]}`; see `agent.py`).
pub async fn python_agent_output(url: &str, ops: Value, mode: &str) -> Value {
    let py = python();
    assert!(
        py.exists(),
        "the Python MCP SDK venv is missing at {}: run scripts/test.sh (the README's test command) or set PORTCULLIS_TEST_PYTHON",
        py.display()
    );
    let script = crate::workspace().join("tests/peers/mcp/agent.py");
    run_agent(
        "Python",
        tokio::process::Command::new(py).arg(script),
        url,
        ops,
        mode,
    )
    .await
}

/// The official SDKs an agent can be built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    /// The Python SDK's newest 2.x (`tests/peers/mcp/requirements.txt`).
    Python,
    /// The Python SDK's newest 1.x (`requirements-v1.txt`, in `target/pyvenv1`), which
    /// predates MCP 2026-07-28.
    PythonV1,
    TypeScript,
    /// fastmcp's client (on the Python SDK's 2.x).
    Fastmcp,
}

impl Sdk {
    pub const ALL: [Sdk; 4] = [Sdk::Python, Sdk::PythonV1, Sdk::TypeScript, Sdk::Fastmcp];

    /// Whether it speaks MCP 2026-07-28.
    pub fn modern(self) -> bool {
        self != Sdk::PythonV1
    }

    /// Runs this SDK's agent against `url` with `ops` and negotiation `mode`; its whole
    /// output (`results`, `asked`).
    pub async fn agent(self, url: &str, ops: Value, mode: &str) -> Value {
        match self {
            Sdk::Python => python_agent_output(url, ops, mode).await,
            Sdk::PythonV1 => {
                let py = python_v1();
                assert!(
                    py.exists(),
                    "the Python MCP SDK 1.x venv is missing at {}: run scripts/test.sh (the README's test command) or set PORTCULLIS_TEST_PYTHON_V1",
                    py.display()
                );
                let script = crate::workspace().join("tests/peers/mcp/agent.py");
                let mut cmd = tokio::process::Command::new(py);
                cmd.arg(script);
                run_agent("Python 1.x", &mut cmd, url, ops, mode).await
            }
            Sdk::TypeScript => typescript_agent_output(url, ops, mode).await,
            Sdk::Fastmcp => {
                let script = crate::workspace().join("tests/peers/mcp/fastmcp_agent.py");
                let mut py = tokio::process::Command::new(python());
                py.arg(script);
                run_agent("fastmcp", &mut py, url, ops, mode).await
            }
        }
    }
}

/// The TypeScript SDK agent's whole output (see `agent.mjs`: the same operations and
/// output as the Python one).
pub async fn typescript_agent_output(url: &str, ops: Value, mode: &str) -> Value {
    let peers = crate::workspace().join("tests/peers");
    assert!(
        peers
            .join("node_modules/@modelcontextprotocol/client")
            .exists(),
        "the TypeScript MCP SDK is not installed: run `npm ci --prefix tests/peers` (the README's test command does)"
    );
    let mut node = tokio::process::Command::new("node");
    node.arg(peers.join("mcp/agent.mjs"));
    run_agent("TypeScript", &mut node, url, ops, mode).await
}

/// Runs an agent command with the arguments both agents take; its output, parsed.
async fn run_agent(
    sdk: &str,
    command: &mut tokio::process::Command,
    url: &str,
    ops: Value,
    mode: &str,
) -> Value {
    let out = command
        .arg(url)
        .arg(ops.to_string())
        .arg(mode)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run the {sdk} agent: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the {sdk} agent failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("agent output is JSON")
}
