//! A throwaway PostgreSQL server for the replica tests (`tests/`) and the replica rows of
//! `cargo xtask bench proxy`: Debian's `postgresql` package, a cluster of its own in a
//! temporary folder, on a loopback port, with password (SCRAM) authentication, stopped
//! when dropped. As root, the server runs as the `postgres` user (PostgreSQL refuses to
//! run as root).
//!
//! # Layout
//!
//! One file: [`bin_dir`] finds the binaries, [`Server`] runs a cluster, [`free_port`]
//! picks the port it (or another server told its port in advance) listens on.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub const USER: &str = "portcullis";
pub const PASSWORD: &str = "pg-test-password-4f1c";

/// The folder with `initdb`, `postgres` and `psql`: `PORTCULLIS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (where Debian installs them); `None` when
/// PostgreSQL is not installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PORTCULLIS_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The `postgres` user's id when we are root, who may not run the server.
fn unprivileged_user() -> Result<Option<u32>> {
    let me = Command::new("id").arg("-u").output().context("id -u")?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return Ok(None);
    }
    let out = Command::new("id").args(["-u", "postgres"]).output()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().context(
        "running as root, PostgreSQL needs an unprivileged user: the `postgres` user (created by Debian's postgresql package) is missing",
    )?;
    Ok(Some(uid))
}

/// A loopback port free now and outside the kernel's ephemeral range, for a server that
/// must be told its port before it starts (PostgreSQL, and the test peers that cannot
/// report a port they chose). Every outgoing connection and every listener on port 0
/// takes its port from the ephemeral range, so a port picked there can be taken before
/// the server binds it; below the range only another caller of this function could
/// take it, and it picks at random.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher as _, Hasher as _};
    const FROM: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral > FROM + 1_000 {
        let span = u64::from(ephemeral - FROM);
        // A random start (the standard library's per-process hash keys), then odd steps.
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        for i in 0..200u64 {
            let offset = start.wrapping_add(i.wrapping_mul(7_919)) % span;
            let port = FROM + u16::try_from(offset).unwrap_or(0);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running cluster.
pub struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    as_user: Option<u32>,
    fsync: bool,
    /// The cluster's major version (`PG_VERSION`).
    pub version: String,
}

impl Server {
    /// A new cluster, started and accepting connections. `fsync: false` for tests
    /// (faster, nothing to keep); benchmarks keep it on, as production does.
    pub fn start(fsync: bool) -> Result<Self> {
        let bin = bin_dir().context(
            "PostgreSQL is not installed: apt-get install postgresql, or set PORTCULLIS_PG_BIN to the folder with initdb, postgres and psql",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()?;
        let as_user = unprivileged_user()?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        if let Some(uid) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid))?;
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(uid))?;
        }
        let mut server = Self {
            bin,
            port: free_port()?,
            child: None,
            as_user,
            fsync,
            version: String::new(),
            dir,
        };
        let out = server
            .command("initdb")
            .arg("-D")
            .arg(server.data())
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        server.version = std::fs::read_to_string(server.data().join("PG_VERSION"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        server.run()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut cmd = match self.as_user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C");
        cmd
    }

    /// Starts the server on its port (again, after [`Server::stop`]) and waits until it
    /// accepts connections.
    pub fn run(&mut self) -> Result<()> {
        let log = self.dir.path().join("server.log");
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", if self.fsync { "fsync=on" } else { "fsync=off" }])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting postgres")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = || {
            // Accepting TCP is not enough while it recovers: ask psql.
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.psql("postgres", "SELECT 1").is_ok()
        };
        while !ready() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "postgres exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("postgres did not accept connections within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (fast shutdown: connections are cut, as when it fails).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// The connection URL of `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Runs `sql` in `database` with psql; returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg(self.url(database))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .context("psql")?;
        if !out.status.success() {
            bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Server {
    /// Immediate shutdown (SIGQUIT): the server and its backends end at once, and its
    /// folder goes with the `TempDir`.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-QUIT")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
