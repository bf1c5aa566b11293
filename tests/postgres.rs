//! A real PostgreSQL server (Debian's `postgresql` package) for the replica tests: its
//! own cluster in a temporary folder, on a loopback port, with password (SCRAM)
//! authentication, stopped when dropped. As root, the server runs as the `postgres`
//! user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const USER: &str = "portcullis";
pub const PASSWORD: &str = "pg-test-password-4f1c";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Runs a server binary as the `postgres` user when we are root.
    as_user: Option<u32>,
    databases: AtomicUsize,
}

/// The folder with `initdb` and `postgres`: `PORTCULLIS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (where Debian installs them).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTCULLIS_PG_BIN") {
        return PathBuf::from(dir);
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
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: scripts/test.sh installs it (apt-get install postgresql), or set PORTCULLIS_PG_BIN to the folder with initdb and postgres"
        )
    })
}

fn postgres_uid() -> Option<u32> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    assert!(
        uid.is_some(),
        "running as root, PostgreSQL needs an unprivileged user: the `postgres` user (created by Debian's postgresql package) is missing"
    );
    uid
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Postgres {
    /// A new cluster, started and accepting connections.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let as_user = postgres_uid();
        if let Some(uid) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        if let Some(uid) = as_user {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(uid)).expect("chown");
        }
        let mut pg = Self {
            bin,
            port: free_port(),
            child: None,
            as_user,
            databases: AtomicUsize::new(0),
            dir,
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
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
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.run();
        pg
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

    /// Starts the server on its port (again, after [`Postgres::stop`]).
    pub fn run(&mut self) {
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
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start postgres");
        let stderr = child.stderr.take().expect("stderr");
        let ready = crate::wait_ready(
            &mut child,
            stderr,
            |line| line.contains("ready to accept connections").then_some(()),
            Duration::from_secs(30),
        );
        if let Err(e) = ready {
            let _ = child.kill();
            panic!("postgres {e}");
        }
        self.child = Some(child);
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

    /// A new, empty database; returns its name ([`Postgres::url`] gives its URL).
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("portcullis_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Runs `sql` in `database` with psql; returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg(self.url(database))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
