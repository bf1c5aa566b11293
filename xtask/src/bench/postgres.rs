//! The PostgreSQL server of the replica rows of `bench proxy` ([`pgserver`], shared with
//! the tests), installed from Debian's package when missing and allowed, run with fsync
//! on as in production.

use anyhow::Result;

pub use pgserver::Server as Postgres;

pub fn start() -> Result<Postgres> {
    if pgserver::bin_dir().is_none() {
        super::apt_install("PostgreSQL", &["postgresql"]).map_err(anyhow::Error::msg)?;
    }
    Postgres::start(true)
}
