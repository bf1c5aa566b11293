//! Where sealed records live: the [`Store`] trait and the choice between its backends.
//!
//! A store keeps opaque sealed bytes per (table, key) and knows nothing of keys or
//! plaintext; sealing and opening stay in [`super::Vault`], the same for every backend,
//! so a record copied from one backend to the other opens with the same master key.

use std::fmt;
use std::path::PathBuf;

use futures_util::future::BoxFuture;
use zeroize::Zeroizing;

use super::{Table, VaultError};

/// One change inside a [`Store::write`] transaction.
#[derive(Debug)]
pub enum Write {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

/// A record another process changed (or, after the feed was interrupted, possibly any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Record {
        table: Table,
        key: String,
    },
    /// The feed reconnected: changes may have been missed; re-read what is cached.
    Resync,
}

/// Held until dropped: the store's lock for one name, across every process sharing it.
pub struct Held(#[allow(dead_code)] Box<dyn Send>);

impl Held {
    pub fn new(inner: impl Send + 'static) -> Self {
        Self(Box::new(inner))
    }
}

/// What [`Store::rewrite_all`] does to each record: its new value from its table, key and
/// current value.
pub type Reseal<'a> = dyn FnMut(Table, &str, &[u8]) -> Result<Vec<u8>, VaultError> + 'a;

/// Sealed records by table and key. Every method is one transaction.
///
/// The API is synchronous because redb is; the PostgreSQL backend runs its pool on a
/// runtime of its own and blocks only the calling thread (see [`super::postgres`]).
pub trait Store: Send + Sync {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, VaultError>;

    fn keys(&self, table: Table) -> Result<Vec<String>, VaultError>;

    /// Every record of `table` (for copying a store).
    fn records(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, VaultError>;

    /// Applies `writes` atomically. Returns, for each [`Write::Delete`] in order, whether
    /// the record existed.
    fn write(&self, writes: Vec<Write>) -> Result<Vec<bool>, VaultError>;

    /// Stores `value` only if `table`/`key` holds nothing; `false` if it did. Replicas
    /// starting together on an empty database agree on one key check this way.
    fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, VaultError>;

    /// Replaces every record of every table with `f(table, key, value)`, in one
    /// transaction: a failure leaves every record as it was. Returns how many.
    fn rewrite_all(&self, f: &mut Reseal<'_>) -> Result<usize, VaultError>;

    /// Where the records are, for messages (never a password).
    fn describe(&self) -> String;

    /// Changes other processes make, for a store several processes share; `None` when
    /// this process is the only writer (redb).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Waits for the lock named `name` across every process sharing the store; `None`
    /// when this process is the only one (its own single-flight is enough).
    fn lock(&self, _name: &str) -> Option<BoxFuture<'static, Result<Held, VaultError>>> {
        None
    }

    /// Whether the store answers now (readiness).
    fn ping(&self) -> Result<(), VaultError> {
        Ok(())
    }
}

/// Which backend holds the vault: the embedded redb file in the data directory (the
/// default), or a PostgreSQL database that several replicas share.
#[derive(Clone, Debug)]
pub enum Location {
    Redb { data_dir: PathBuf },
    Postgres(DatabaseUrl),
}

impl Location {
    /// `url` (`--database-url` / `PORTCULLIS_DATABASE_URL`) when given, else redb in
    /// `data_dir`.
    pub fn new(data_dir: &std::path::Path, url: Option<DatabaseUrl>) -> Self {
        match url {
            Some(url) => Self::Postgres(url),
            None => Self::Redb {
                data_dir: data_dir.to_owned(),
            },
        }
    }

    /// Whether a vault may already be there. A redb vault is a file; a database is
    /// always asked (opening it creates nothing but its tables).
    pub fn exists(&self) -> bool {
        match self {
            Self::Redb { data_dir } => data_dir.join(super::DB_FILE).exists(),
            Self::Postgres(_) => true,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redb { data_dir } => write!(f, "{}", data_dir.join(super::DB_FILE).display()),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// A `postgres://` connection URL. It may carry a password, so it is only ever shown
/// with the password replaced by `***`.
#[derive(Clone)]
pub struct DatabaseUrl(Zeroizing<String>);

impl DatabaseUrl {
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let bad = |why: &str| {
            VaultError::Store(format!(
                "the database URL is not usable: {why}; give postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (or postgresql://…, with ?host=/socket/dir for a Unix socket)"
            ))
        };
        let parsed = url::Url::parse(text.trim()).map_err(|_| bad("it is not a URL"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad("only postgres:// and postgresql:// are supported"));
        }
        Ok(Self(Zeroizing::new(text.trim().to_owned())))
    }

    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                // Query parameters may carry a password too (`?password=`).
                if u.query().is_some_and(|q| q.contains("password")) {
                    u.set_query(Some("***"));
                }
                write!(f, "{u}")
            }
            Err(_) => f.write_str("postgres://***"),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_never_show_a_password() {
        let u =
            DatabaseUrl::parse("postgres://app:hunter2@db.internal:5432/portcullis").expect("url");
        assert_eq!(
            u.to_string(),
            "postgres://app:***@db.internal:5432/portcullis"
        );
        assert!(!format!("{u:?}").contains("hunter2"));
        let q = DatabaseUrl::parse("postgresql://db/p?user=a&password=hunter2").expect("url");
        assert!(!q.to_string().contains("hunter2"), "{q}");
        assert!(DatabaseUrl::parse("mysql://db/p").is_err());
        assert!(DatabaseUrl::parse("db.internal").is_err());
        let err = DatabaseUrl::parse("http://app:hunter2@db/p").expect_err("scheme");
        assert!(!err.to_string().contains("hunter2"));
    }
}
