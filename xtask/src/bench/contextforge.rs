//! IBM ContextForge (PyPI `mcp-contextforge-gateway`), the MCP gateway a user would
//! otherwise pick, as a peer target of `cargo xtask bench mcp`.
//!
//! The benchmark installs a pinned release into a virtualenv under the target directory
//! (once; later runs reuse it), starts it the way its tuning guide recommends for a small
//! machine, registers the benchmark's upstream as a gateway with the same bearer token
//! Portcullis injects, and returns the JWT an agent presents. Its tool is then called at
//! `/mcp` exactly as Portcullis's is at `/v1/mcp`: same upstream, same load generator.
//!
//! Settings, and why (ContextForge's own "Gateway Tuning Guide"):
//! - uvicorn worker processes (`--workers`, uvloop and httptools, which the package
//!   installs), access log off and `LOG_LEVEL=ERROR`;
//! - SQLite (its embedded default, like Portcullis's redb) with the schema migrated once
//!   before the workers start, and in-process caches (`CACHE_TYPE=memory`; nothing
//!   changes during the run, so per-worker caches stay valid);
//! - authentication on (`AUTH_REQUIRED`, a JWT per agent): Portcullis identifies and
//!   authorizes every call too, so neither side skips its security work;
//! - its per-user rate limit off: by default it answers 429 after 100 `/mcp` calls a
//!   minute, which would measure the limit, not the gateway (Portcullis has none);
//! - sessionless ([`Mode::stateful`] false): its default stateless streamable HTTP with
//!   JSON answers; it issues no `Mcp-Session-Id`, so SDK clients call it sessionless, and
//!   it opens an upstream session for every call;
//! - in a session: `USE_STATEFUL_SESSIONS=true`, which keeps one upstream session per
//!   client session (its calls serialised), on one worker, since sessions live in one
//!   worker's memory unless Redis provides its session affinity.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, HeaderValue};
use serde_json::json;

use super::ChildGuard;
use super::host::{AtRest, IDLE_SETTLE, free_port, wait_ready_within};
use super::load::{self, Target};

/// The release measured, pinned so that runs compare.
pub(super) const PACKAGE: &str = "mcp-contextforge-gateway==1.0.7.post20260921";
/// The tool name ContextForge gives the upstream's `ping` on the gateway named `bench`.
pub(super) const TOOL: &str = "bench-ping";
/// Where agents call it.
pub(super) const MCP_PATH: &str = "/mcp";
/// The administrator the JWT names (ContextForge creates it at first start).
const ADMIN_EMAIL: &str = "admin@example.com";
/// Secrets for a throw-away instance on loopback; ContextForge refuses weak defaults.
const JWT_SECRET: &str = "bench-contextforge-jwt-secret-5f1c9a7e3b2d4c6a";
const ENCRYPTION_SECRET: &str = "bench-contextforge-encryption-8e2a6c4f1b3d5a7c";
const ADMIN_PASSWORD: &str = "Bench-Admin-Passw0rd-7c1e";
/// First start imports a large application in every worker.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it may take to discover the upstream's tool after registration.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The virtualenv with [`PACKAGE`] installed, installing it if missing.
pub(super) fn prepare(root: &Path) -> Result<PathBuf, String> {
    let venv = super::target_dir(root).join("bench").join("contextforge");
    let marker = venv.join("installed-package.txt");
    if fs::read_to_string(&marker).is_ok_and(|p| p == PACKAGE) && python(&venv).is_file() {
        return Ok(venv);
    }
    let python3 = super::find_executable("python3").ok_or(
        "python3 is not installed: ContextForge is a Python package; install python3 with \
         venv support (Debian: `apt-get install python3-venv`)",
    )?;
    eprintln!("bench: installing {PACKAGE} into {}", venv.display());
    let _ = fs::remove_dir_all(&venv);
    let step = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let status = super::run_interruptible(cmd, what).map_err(|e| format!("{e:#}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{what}` failed ({status}); see its output above (PyPI must be reachable)"
            ))
        }
    };
    step(
        Command::new(python3).args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    step(
        Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PACKAGE,
        ]),
        &format!("pip install {PACKAGE}"),
    )?;
    fs::write(&marker, PACKAGE).map_err(|e| format!("writing {}: {e}", marker.display()))?;
    Ok(venv)
}

fn python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// A started ContextForge with the upstream registered, and the `Authorization` value
/// an agent sends it.
pub(super) struct Started {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub authorization: HeaderValue,
}

/// How ContextForge runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mode {
    pub workers: u64,
    /// MCP sessions (`USE_STATEFUL_SESSIONS`), off by default.
    pub stateful: bool,
}

/// Migrates a fresh SQLite database in `dir`, starts it in `mode`, measures it at rest,
/// registers `upstream` (bearer `secret`) and waits until its tool is listed.
pub(super) fn start(
    venv: &Path,
    dir: &Path,
    upstream: SocketAddr,
    secret: &str,
    mode: Mode,
) -> Result<Started> {
    fs::create_dir_all(dir).context("creating the ContextForge dir")?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let env = environment(dir, addr, mode);
    let log =
        |name: &str| fs::File::create(dir.join(name)).with_context(|| format!("creating {name}"));

    // Each worker migrates at start-up; on one SQLite file at once they would race, so
    // the schema is brought up to date first (the workers then find nothing to do).
    let started = Instant::now();
    let status = Command::new(python(venv))
        .args(["-m", "mcpgateway.bootstrap_db"])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log("bootstrap.log")?)
        .stderr(log("bootstrap.err.log")?)
        .status()
        .context("running mcpgateway.bootstrap_db")?;
    if !status.success() {
        bail!(
            "mcpgateway.bootstrap_db failed ({status}):\n{}",
            super::host::log_tail(&dir.join("bootstrap.err.log"), 15).unwrap_or_default()
        );
    }

    let child = Command::new(venv.join("bin").join("mcpgateway"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--workers", &mode.workers.to_string()])
        .args(["--no-access-log", "--log-level", "error"])
        // Agents keep their connections; uvicorn's default closes idle ones after 5 s.
        .args(["--timeout-keep-alive", "75"])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log("stdout.log")?)
        .stderr(log("stderr.log")?)
        .process_group(0)
        .spawn()
        .context("starting mcpgateway")?;
    let mut guard = ChildGuard::new_group("contextforge", child, "TERM");
    wait_ready_within(
        &mut guard,
        "contextforge",
        addr,
        "/health",
        true,
        READY_TIMEOUT,
    )?;
    let ready_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    thread::sleep(IDLE_SETTLE);
    guard.at_rest = Some(AtRest::read(
        guard.pid(),
        ready_ms,
        dir_size(venv),
        "virtualenv",
    )?);

    let authorization = token(venv, &env)?;
    register(addr, &authorization, upstream, secret)?;
    wait_for_tool(&mut guard, addr, &authorization)?;
    Ok(Started {
        guard,
        addr,
        authorization,
    })
}

/// The settings named in the module documentation, for a data directory `dir`.
fn environment(dir: &Path, addr: SocketAddr, mode: Mode) -> Vec<(&'static str, String)> {
    let db = dir.join("contextforge.db");
    vec![
        ("DATABASE_URL", format!("sqlite:///{}", db.display())),
        ("HOST", addr.ip().to_string()),
        ("PORT", addr.port().to_string()),
        ("JWT_SECRET_KEY", JWT_SECRET.into()),
        ("AUTH_ENCRYPTION_SECRET", ENCRYPTION_SECRET.into()),
        ("PLATFORM_ADMIN_EMAIL", ADMIN_EMAIL.into()),
        ("PLATFORM_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        ("BASIC_AUTH_PASSWORD", ADMIN_PASSWORD.into()),
        ("AUTH_REQUIRED", "true".into()),
        ("MCPGATEWAY_UI_ENABLED", "false".into()),
        ("MCPGATEWAY_ADMIN_API_ENABLED", "false".into()),
        ("CACHE_TYPE", "memory".into()),
        ("RATE_LIMITING_ENABLED", "false".into()),
        ("USE_STATEFUL_SESSIONS", mode.stateful.to_string()),
        ("LOG_LEVEL", "ERROR".into()),
        // The benchmark's upstream is on loopback, which its SSRF guard refuses by default.
        ("SSRF_ALLOW_LOCALHOST", "true".into()),
        // Keep the virtualenv's interpreter from writing bytecode next to the package.
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ]
}

/// A JWT for the administrator, minted with ContextForge's own tool.
fn token(venv: &Path, env: &[(&'static str, String)]) -> Result<HeaderValue> {
    let out = Command::new(python(venv))
        .args(["-m", "mcpgateway.utils.create_jwt_token"])
        .args([
            "--username",
            ADMIN_EMAIL,
            "--exp",
            "120",
            "--secret",
            JWT_SECRET,
        ])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .output()
        .context("running mcpgateway.utils.create_jwt_token")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let jwt = stdout.lines().map(str::trim).rfind(|l| !l.is_empty());
    match jwt {
        Some(jwt) if out.status.success() && jwt.split('.').count() == 3 => {
            HeaderValue::from_str(&format!("Bearer {jwt}")).context("the JWT is not a header")
        }
        _ => bail!(
            "create_jwt_token failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(500)
                .collect::<String>()
        ),
    }
}

/// Registers the upstream as the gateway `bench`, authenticated like Portcullis's
/// connector (the same bearer token).
fn register(
    addr: SocketAddr,
    authorization: &HeaderValue,
    upstream: SocketAddr,
    secret: &str,
) -> Result<()> {
    let body = json!({
        "name": "bench",
        "url": format!("http://{upstream}/mcp"),
        "transport": "STREAMABLEHTTP",
        "auth_type": "bearer",
        "auth_token": secret,
    });
    let (status, _, answer) = load::probe_response(&Target::post(
        "register gateway",
        addr,
        "/gateways",
        Bytes::from(body.to_string()),
        super::mcp::post_headers(Some(authorization), None),
        Bytes::new(),
    ))?;
    if !status.is_success() {
        bail!(
            "POST /gateways answered {status}: {}",
            String::from_utf8_lossy(&answer)
                .chars()
                .take(500)
                .collect::<String>()
        );
    }
    Ok(())
}

/// Waits until its tool list names [`TOOL`] (asked through its REST API, which answers
/// the same in both modes, where `/mcp` in stateful mode first needs a session).
fn wait_for_tool(guard: &mut ChildGuard, addr: SocketAddr, auth: &HeaderValue) -> Result<()> {
    let list = Target {
        headers: vec![(AUTHORIZATION, auth.clone())],
        ..Target::get("GET /tools", addr, "/tools")
    };
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    let needle = format!("\"{TOOL}\"");
    loop {
        super::check_interrupted()?;
        if let Some(status) = guard.exited() {
            bail!("contextforge exited after start ({status})");
        }
        if let Ok((StatusCode::OK, body)) = load::probe_target(&list)
            && String::from_utf8_lossy(&body).contains(&needle)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("contextforge did not list {TOOL} within {DISCOVERY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Bytes on disk under `dir` (the installed size of a virtualenv).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The measured release, for the report.
pub(super) fn version() -> &'static str {
    PACKAGE.split_once("==").map(|(_, v)| v).unwrap_or(PACKAGE)
}
