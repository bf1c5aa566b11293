//! A real PostgreSQL server for the replica tests ([`pgserver`], shared with the
//! benchmarks), with a fresh database per use.

use std::sync::atomic::{AtomicUsize, Ordering};

pub use pgserver::PASSWORD;

pub struct Postgres {
    server: pgserver::Server,
    databases: AtomicUsize,
}

impl Postgres {
    /// A new cluster, started (fsync off: nothing here needs to survive a crash).
    pub fn start() -> Self {
        Self {
            server: pgserver::Server::start(false).unwrap_or_else(|e| panic!("{e:#}")),
            databases: AtomicUsize::new(0),
        }
    }

    /// Starts the server again after [`Postgres::stop`].
    pub fn run(&mut self) {
        self.server.run().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Stops the server (fast shutdown: connections are cut, as when it fails).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// A new, empty database; returns its name ([`Postgres::url`] gives its URL).
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("portcullis_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    pub fn url(&self, database: &str) -> String {
        self.server.url(database)
    }

    /// Runs `sql` in `database` with psql; returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.server
            .psql(database, sql)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}
