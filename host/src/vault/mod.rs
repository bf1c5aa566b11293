//! The vault: the only place that sees secrets at rest.
//!
//! Values are sealed with AES-256-GCM: a fresh random 96-bit nonce per write, and
//! associated data that binds the record to its table and key, so a sealed value copied
//! to another record fails to open. The sealed bytes live in a [`store::Store`]: the
//! embedded redb file (`<data-dir>/portcullis.redb`, the default) or a PostgreSQL database
//! that several replicas share (`--database-url`). Sealing is the same on both, so
//! `portcullis migrate-store` copies records as they are. The master key comes from
//! `PORTCULLIS_MASTER_KEY` or a key file created on first start with mode 0600.
//! `portcullis rotate-key` re-seals every record under a new key in one transaction.
//!
//! Record layout: `[version=1][nonce: 12][ciphertext + tag: 16]`.
//!
//! # Layout
//!
//! - `mod.rs`: the master key, sealing, [`Vault`], rotation, copying between stores.
//! - `store.rs`: the [`store::Store`] trait and [`Location`] (which backend).
//! - `embedded.rs`: redb. `postgres.rs`: PostgreSQL (pool, migrations).

mod embedded;
mod postgres;
pub mod store;

pub use store::{DatabaseUrl, Location};
use store::{Store, Write as StoreWrite};

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use zeroize::Zeroizing;

/// Environment variable holding the base64 (or hex) master key; wins over the key file.
pub const MASTER_KEY_ENV: &str = "PORTCULLIS_MASTER_KEY";
pub const DB_FILE: &str = "portcullis.redb";
pub const KEY_FILE: &str = "master.key";

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const AAD_DOMAIN: &str = "portcullis/vault/v1";
const KEY_CHECK: &[u8] = b"portcullis master key check";

/// The vault's tables. Each sealed value is bound to its table's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Internal: the key-check record.
    Meta,
    /// Secrets the host owns (inline config secrets moved here on save).
    Secrets,
    /// When each secret was last set (Unix seconds), for listings that never show values.
    SecretTimes,
    /// Client-credentials access tokens, per connector.
    ClientTokens,
    /// Per-user OAuth tokens, per (connection, user).
    UserTokens,
    /// Authorizations in progress (PKCE verifier, caller), per state hash; 15 minutes.
    OAuthPending,
    /// Dynamically registered OAuth clients, per connector.
    OAuthClients,
    /// The saved config and the one before it, when replicas share a PostgreSQL vault
    /// (one host keeps it in a file in the data directory).
    Config,
    /// MCP sessions' `initialize` parameters and owners, so a session moves between
    /// replicas sharing a PostgreSQL vault.
    McpSessions,
}

impl Table {
    pub const ALL: &'static [Table] = &[
        Table::Meta,
        Table::Secrets,
        Table::SecretTimes,
        Table::ClientTokens,
        Table::UserTokens,
        Table::OAuthPending,
        Table::OAuthClients,
        Table::Config,
        Table::McpSessions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Secrets => "secrets",
            Self::SecretTimes => "secret_times",
            Self::ClientTokens => "client_tokens",
            Self::UserTokens => "user_tokens",
            Self::OAuthPending => "oauth_pending",
            Self::OAuthClients => "oauth_clients",
            Self::Config => "config",
            Self::McpSessions => "mcp_sessions",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    // The cause is in the message and not a `source`, so `{:#}` does not say it twice.
    #[error("cannot use master key file {path}: {cause}")]
    KeyFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "master key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` and start again"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the master key is malformed: {0}; it must be 32 bytes in base64 or hex")]
    BadKey(String),
    #[error(
        "the master key does not open this vault ({place}); set the key it was created with \
         ({MASTER_KEY_ENV} or the key file)"
    )]
    WrongKey { place: String },
    #[error("the vault {path} is in use by another process (stop `portcullis serve` first)")]
    Locked { path: PathBuf },
    #[error("vault storage error: {0}")]
    Store(String),
    #[error("the sealed record {table}/{key} cannot be opened (tampered with or moved)")]
    Corrupt { table: &'static str, key: String },
}

/// A 256-bit master key, wiped from memory when dropped.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(********)")
    }
}

/// Where the master key came from (rotation writes back to the same place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        fill_random(k.as_mut());
        Self(k)
    }

    /// Parses base64 (standard, padded or not) or 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let t = text.trim();
        let bytes = Zeroizing::new(
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                (0..32)
                    .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|e| VaultError::BadKey(e.to_string()))?
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                    .map_err(|e| VaultError::BadKey(e.to_string()))?
            },
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::BadKey(format!("it decodes to {} bytes", bytes.len())))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.as_ref()))
    }

    /// The key from `PORTCULLIS_MASTER_KEY`, else from `key_file` (created, 0600, on first
    /// start). A key file others can read is refused.
    pub fn load(key_file: &Path) -> Result<(Self, KeySource), VaultError> {
        if let Ok(v) = std::env::var(MASTER_KEY_ENV)
            && !v.trim().is_empty()
        {
            return Ok((Self::parse(&v)?, KeySource::Env));
        }
        let io = |cause| VaultError::KeyFile {
            path: key_file.to_owned(),
            cause,
        };
        match fs::metadata(key_file) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(VaultError::KeyPermissions {
                        path: key_file.to_owned(),
                        mode,
                    });
                }
                let text = Zeroizing::new(fs::read_to_string(key_file).map_err(io)?);
                Ok((Self::parse(&text)?, KeySource::File(key_file.to_owned())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_key_file(key_file, &key).map_err(io)?;
                tracing::info!(path = %key_file.display(), "created a new vault master key");
                Ok((key, KeySource::File(key_file.to_owned())))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Writes a key file with mode 0600 from the start (never world-readable, even briefly).
fn write_key_file(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(key.encode().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    sync_dir(path)
}

/// Makes a new or renamed directory entry durable (the file's own fsync does not).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)?.sync_all(),
        _ => fs::File::open(".")?.sync_all(),
    }
}

fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing is not recoverable for a process that must seal secrets.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// The associated data that binds a sealed value to where it lives.
fn aad(table: Table, key: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_DOMAIN.len() + table.name().len() + key.len() + 2);
    a.extend_from_slice(AAD_DOMAIN.as_bytes());
    a.push(0);
    a.extend_from_slice(table.name().as_bytes());
    a.push(0);
    a.extend_from_slice(key.as_bytes());
    a
}

struct Sealer(Aes256Gcm);

impl Sealer {
    fn new(key: &MasterKey) -> Self {
        #[allow(clippy::expect_used)] // 32 bytes is always a valid AES-256 key.
        Self(Aes256Gcm::new_from_slice(key.0.as_ref()).expect("32-byte key"))
    }

    fn seal(&self, table: Table, key: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        #[allow(clippy::expect_used)] // Encryption only fails for absurd (> 64 GiB) inputs.
        let ct = self
            .0
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad(table, key),
                },
            )
            .expect("AES-GCM encryption");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open(
        &self,
        table: Table,
        key: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let corrupt = || VaultError::Corrupt {
            table: table.name(),
            key: key.to_owned(),
        };
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
            return Err(corrupt());
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().map_err(|_| corrupt())?;
        self.0
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: &aad(table, key),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupt())
    }
}

/// The sealed store.
pub struct Vault {
    store: Box<dyn Store>,
    sealer: Sealer,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens (or creates) the vault at `location` and proves `key` is the right one.
    pub fn open(location: &Location, key: &MasterKey) -> Result<Self, VaultError> {
        let store: Box<dyn Store> = match location {
            Location::Redb { data_dir } => Box::new(embedded::RedbStore::open(data_dir)?),
            Location::Postgres(url) => Box::new(postgres::PgStore::open(url)?),
        };
        let vault = Self {
            store,
            sealer: Sealer::new(key),
        };
        vault.check_key()?;
        Ok(vault)
    }

    /// Where the records are (a file, or a database URL without its password).
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Records other processes sharing the store changed (PostgreSQL); `None` when this
    /// process is the store's only writer.
    pub fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<store::Change>> {
        self.store.changes()
    }

    /// Holds `table`/`key` against every other process sharing the store until the
    /// guard drops, so one replica does what all would (a token refresh). `Ok(None)`:
    /// this process is the only one.
    pub async fn lock(&self, table: Table, key: &str) -> Result<Option<store::Held>, VaultError> {
        match self.store.lock(&format!("{}\n{key}", table.name())) {
            Some(wait) => wait.await.map(Some),
            None => Ok(None),
        }
    }

    /// Whether the store answers (readiness).
    pub fn ping(&self) -> Result<(), VaultError> {
        self.store.ping()
    }

    /// The first opener of an empty store writes the key check; everyone after (another
    /// replica, a restart) must open it.
    fn check_key(&self) -> Result<(), VaultError> {
        const KEY: &str = "key_check";
        let sealed = match self.store.get(Table::Meta, KEY)? {
            Some(sealed) => sealed,
            None => {
                let mine = self.sealer.seal(Table::Meta, KEY, KEY_CHECK);
                if self.store.insert_new(Table::Meta, KEY, &mine)? {
                    return Ok(());
                }
                // Another replica won the race: its check must open with this key too.
                self.store.get(Table::Meta, KEY)?.unwrap_or_default()
            }
        };
        match self.sealer.open(Table::Meta, KEY, &sealed) {
            Ok(p) if p.as_slice() == KEY_CHECK => Ok(()),
            _ => Err(VaultError::WrongKey {
                place: self.store.describe(),
            }),
        }
    }

    /// Seals and stores `plaintext` under `table`/`key`, durably.
    pub fn put(&self, table: Table, key: &str, plaintext: &[u8]) -> Result<(), VaultError> {
        let sealed = self.sealer.seal(table, key, plaintext);
        self.store
            .write(vec![StoreWrite::Put(table, key.to_owned(), sealed)])
            .map(drop)
    }

    /// Seals and stores several records in one transaction.
    pub fn put_many(&self, records: &[(Table, &str, &[u8])]) -> Result<(), VaultError> {
        let writes = records
            .iter()
            .map(|&(table, key, plain)| {
                StoreWrite::Put(table, key.to_owned(), self.sealer.seal(table, key, plain))
            })
            .collect();
        self.store.write(writes).map(drop)
    }

    /// Opens the record at `table`/`key`, if there is one.
    pub fn get(&self, table: Table, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        match self.store.get(table, key)? {
            Some(sealed) => self.sealer.open(table, key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<bool, VaultError> {
        let existed = self
            .store
            .write(vec![StoreWrite::Delete(table, key.to_owned())])?;
        Ok(existed.first().copied().unwrap_or(false))
    }

    pub fn keys(&self, table: Table) -> Result<Vec<String>, VaultError> {
        self.store.keys(table)
    }

    /// Sets a named secret (`{"vault": NAME}`) and when it was set, in one transaction.
    pub fn set_secret(&self, name: &str, value: &[u8]) -> Result<(), VaultError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let writes = [
            (Table::Secrets, value),
            (Table::SecretTimes, now.as_bytes()),
        ]
        .into_iter()
        .map(|(table, plain)| {
            StoreWrite::Put(table, name.to_owned(), self.sealer.seal(table, name, plain))
        })
        .collect();
        self.store.write(writes).map(drop)
    }

    /// Removes a named secret; `false` if there was none.
    pub fn remove_secret(&self, name: &str) -> Result<bool, VaultError> {
        let existed = self.store.write(vec![
            StoreWrite::Delete(Table::Secrets, name.to_owned()),
            StoreWrite::Delete(Table::SecretTimes, name.to_owned()),
        ])?;
        Ok(existed.first().copied().unwrap_or(false))
    }

    /// Every named secret with when it was set (Unix seconds; `None` for secrets stored
    /// before times were kept). Never a value.
    pub fn secret_names(&self) -> Result<Vec<(String, Option<u64>)>, VaultError> {
        self.keys(Table::Secrets)?
            .into_iter()
            .map(|name| {
                let at = self
                    .get(Table::SecretTimes, &name)?
                    .and_then(|t| std::str::from_utf8(&t).ok()?.parse().ok());
                Ok((name, at))
            })
            .collect()
    }

    /// Re-seals every record under `new` in one transaction, so a crash leaves either
    /// all records under the old key or all under the new one. Returns how many records
    /// were re-sealed.
    fn reseal_all(&mut self, new: &MasterKey) -> Result<usize, VaultError> {
        let next = Sealer::new(new);
        let n = self.store.rewrite_all(&mut |table, key, sealed| {
            let plain = self.sealer.open(table, key, sealed)?;
            Ok(next.seal(table, key, &plain))
        })?;
        self.sealer = next;
        Ok(n)
    }
}

/// The saved config's key in [`Table::Config`].
pub const SAVED_CONFIG_RECORD: &str = "saved";

/// What `migrate-store` copied.
#[derive(Debug)]
pub struct Copied {
    pub records: usize,
    pub from: String,
    pub to: String,
}

/// `portcullis migrate-store`: copies every record of the vault at `from` into `to`, as
/// sealed (both use the same master key), with `config` (the saved config, which
/// replicas read from the vault) in the same transaction, then opens every copied
/// record at `to` to prove it is usable there. Refused when `to` already holds records
/// other than its key check, so two vaults are never merged by accident.
pub fn copy_store(
    from: &Location,
    to: &Location,
    key: &MasterKey,
    config: Option<&str>,
) -> Result<Copied, VaultError> {
    let source = Vault::open(from, key)?;
    let target = Vault::open(to, key)?;
    for &table in Table::ALL {
        if table != Table::Meta && !target.store.keys(table)?.is_empty() {
            return Err(VaultError::Store(format!(
                "{} already holds records ({}); copy into an empty store",
                target.describe(),
                table.name()
            )));
        }
    }
    let mut writes = Vec::new();
    for &table in Table::ALL {
        if table == Table::Meta {
            continue;
        }
        for (key, sealed) in source.store.records(table)? {
            // Opened here first: a record that does not open is reported, not copied.
            source.sealer.open(table, &key, &sealed)?;
            writes.push(StoreWrite::Put(table, key, sealed));
        }
    }
    let records = writes.len();
    if let Some(text) = config {
        writes.push(StoreWrite::Put(
            Table::Config,
            SAVED_CONFIG_RECORD.to_owned(),
            target
                .sealer
                .seal(Table::Config, SAVED_CONFIG_RECORD, text.as_bytes()),
        ));
    }
    target.store.write(writes)?;
    for &table in Table::ALL {
        for key in target.store.keys(table)? {
            target.get(table, &key)?;
        }
    }
    Ok(Copied {
        records,
        from: source.describe(),
        to: target.describe(),
    })
}

/// What `rotate-key` did.
#[derive(Debug)]
pub struct Rotation {
    pub records: usize,
    /// Set when the key came from the environment: the operator must install it.
    pub new_env_key: Option<Zeroizing<String>>,
    /// The 0600 file that also holds that key, to delete once it is installed.
    pub pending_key_file: Option<PathBuf>,
}

/// `portcullis rotate-key`: a new master key, every record re-sealed under it.
///
/// With a key file, the new key is first written beside it (`master.key.next`, 0600),
/// then the records are re-sealed in one transaction, then the file is renamed over the
/// old one. [`recover_interrupted_rotation`] finishes or undoes an interrupted run.
///
/// With PostgreSQL the replicas that share the database hold the old key until they
/// restart with the new one; until then they cannot open what was re-sealed.
pub fn rotate(
    location: &Location,
    data_dir: &Path,
    key_file: &Path,
) -> Result<Rotation, VaultError> {
    recover_interrupted_rotation(location, key_file)?;
    let (old, source) = MasterKey::load(key_file)?;
    let mut vault = Vault::open(location, &old)?;
    let new = MasterKey::generate();
    let key_io = |path: &Path| {
        let path = path.to_owned();
        move |cause| VaultError::KeyFile { path, cause }
    };
    match source {
        KeySource::Env => {
            // The new key is on disk (0600) before any record is sealed with it, so a
            // crash cannot leave the vault sealed under a key nobody has.
            let pending = data_dir.join(ENV_ROTATION_KEY_FILE);
            let _ = fs::remove_file(&pending);
            write_key_file(&pending, &new).map_err(key_io(&pending))?;
            let records = vault.reseal_all(&new)?;
            Ok(Rotation {
                records,
                new_env_key: Some(new.encode()),
                pending_key_file: Some(pending),
            })
        }
        KeySource::File(path) => {
            let next = next_key_path(&path);
            let _ = fs::remove_file(&next);
            write_key_file(&next, &new).map_err(key_io(&next))?;
            let records = vault.reseal_all(&new)?;
            fs::rename(&next, &path)
                .and_then(|()| sync_dir(&path))
                .map_err(key_io(&path))?;
            Ok(Rotation {
                records,
                new_env_key: None,
                pending_key_file: None,
            })
        }
    }
}

/// Where `rotate-key` keeps the new key when the old one came from the environment,
/// until the operator has installed it.
pub const ENV_ROTATION_KEY_FILE: &str = "master.key.rotated";

fn next_key_path(key_file: &Path) -> PathBuf {
    let mut s = key_file.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

/// If a rotation stopped between re-sealing and renaming, the `.next` key is the one that
/// opens the vault: install it. If it stopped before re-sealing, the old key still opens
/// the vault and the `.next` key is discarded. Anything else (the vault locked, an I/O
/// error) stops here with both keys kept: guessing could destroy the only working key.
pub fn recover_interrupted_rotation(
    location: &Location,
    key_file: &Path,
) -> Result<(), VaultError> {
    let next = next_key_path(key_file);
    if !next.exists() || !location.exists() {
        return Ok(());
    }
    let text = Zeroizing::new(
        fs::read_to_string(&next).map_err(|cause| VaultError::KeyFile {
            path: next.clone(),
            cause,
        })?,
    );
    let next_key = MasterKey::parse(&text)?;
    match Vault::open(location, &next_key) {
        Ok(_) => {
            fs::rename(&next, key_file)
                .and_then(|()| sync_dir(key_file))
                .map_err(|cause| VaultError::KeyFile {
                    path: key_file.to_owned(),
                    cause,
                })?;
            tracing::warn!(path = %key_file.display(), "completed an interrupted key rotation");
            Ok(())
        }
        Err(VaultError::WrongKey { .. }) => {
            // Only discard it once the current key is proven to open the vault.
            let (current, _) = MasterKey::load(key_file)?;
            drop(Vault::open(location, &current)?);
            let _ = fs::remove_file(&next);
            tracing::warn!(path = %next.display(), "discarded the key of a rotation that never started re-sealing");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Creates `dir` (and its parents) as needed; folders created here are 0700, since what
/// goes in them (vault, key, saved config, compiled plugins) is the host's alone.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Opens the vault at `location` with the key from the environment or `key_file`:
/// creates the store and the key on first use, and finishes an interrupted rotation.
pub fn open(location: &Location, key_file: &Path) -> Result<Vault, VaultError> {
    recover_interrupted_rotation(location, key_file)?;
    let (key, _) = MasterKey::load(key_file)?;
    Vault::open(location, &key)
}

/// Resolves a secret reference (inline, environment or vault) to its value, for building
/// a connector's credential. `path` names the config field in errors; values never do.
pub fn resolve_secret(
    r: &crate::config::SecretRef,
    vault: &Vault,
    path: &str,
) -> anyhow::Result<Zeroizing<String>> {
    match r {
        crate::config::SecretRef::Inline(s) => Ok(Zeroizing::new(s.clone())),
        crate::config::SecretRef::Env(name) => std::env::var(name).map(Zeroizing::new).map_err(|_| {
            anyhow::anyhow!("{path}: environment variable {name} is not set (or not UTF-8); set it or change the config")
        }),
        crate::config::SecretRef::Vault(name) => {
            let v = vault
                .get(Table::Secrets, name)?
                .ok_or_else(|| anyhow::anyhow!("{path}: the vault has no secret named \"{name}\""))?;
            Ok(Zeroizing::new(String::from_utf8(v.to_vec()).map_err(|_| {
                anyhow::anyhow!("{path}: vault secret \"{name}\" is not UTF-8")
            })?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redb(dir: &Path) -> Location {
        Location::Redb {
            data_dir: dir.to_owned(),
        }
    }

    fn vault() -> (tempfile::TempDir, Vault, MasterKey) {
        let dir = tempfile::tempdir().expect("tmp");
        let key = MasterKey::generate();
        let v = Vault::open(&redb(dir.path()), &key).expect("open");
        (dir, v, key)
    }

    #[test]
    fn round_trip_and_no_plaintext_on_disk() {
        let (dir, v, _) = vault();
        v.put(Table::Secrets, "github", b"ghp_supersecretvalue123")
            .expect("put");
        assert_eq!(
            v.get(Table::Secrets, "github")
                .expect("get")
                .expect("some")
                .as_slice(),
            b"ghp_supersecretvalue123"
        );
        drop(v);
        let raw = fs::read(dir.path().join(DB_FILE)).expect("read db");
        assert!(
            !raw.windows(b"ghp_supersecretvalue123".len())
                .any(|w| w == b"ghp_supersecretvalue123")
        );
    }

    #[test]
    fn named_secrets_list_names_and_times_never_values() {
        let (dir, v, _) = vault();
        v.set_secret("github_pat", b"ghp_listedvalue").expect("set");
        let names = v.secret_names().expect("names");
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].0, "github_pat");
        assert!(names[0].1.is_some_and(|t| t > 1_700_000_000));
        assert_eq!(
            v.get(Table::Secrets, "github_pat")
                .expect("get")
                .expect("some")
                .as_slice(),
            b"ghp_listedvalue"
        );
        assert!(v.remove_secret("github_pat").expect("rm"));
        assert!(!v.remove_secret("github_pat").expect("rm again"));
        assert!(v.secret_names().expect("names").is_empty());
        drop(v);
        let raw = fs::read(dir.path().join(DB_FILE)).expect("read db");
        assert!(!raw.windows(15).any(|w| w == b"ghp_listedvalue"));
    }

    #[test]
    fn fresh_nonce_per_write() {
        let (_d, v, key) = vault();
        let s = Sealer::new(&key);
        assert_ne!(
            s.seal(Table::Secrets, "k", b"x"),
            s.seal(Table::Secrets, "k", b"x")
        );
        drop(v);
    }

    #[test]
    fn sealed_value_moved_to_another_record_fails_to_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = MasterKey::generate();
        let store = embedded::RedbStore::open(dir.path()).expect("store");
        let v = Vault {
            store: Box::new(store),
            sealer: Sealer::new(&key),
        };
        v.put(Table::Secrets, "a", b"value-a").expect("put");
        let sealed = v
            .store
            .get(Table::Secrets, "a")
            .expect("raw")
            .expect("some");
        v.store
            .write(vec![
                StoreWrite::Put(Table::Secrets, "b".into(), sealed.clone()),
                StoreWrite::Put(Table::ClientTokens, "a".into(), sealed),
            ])
            .expect("tamper");
        assert!(matches!(
            v.get(Table::Secrets, "b"),
            Err(VaultError::Corrupt { .. })
        ));
        assert!(matches!(
            v.get(Table::ClientTokens, "a"),
            Err(VaultError::Corrupt { .. })
        ));
        assert!(v.get(Table::Secrets, "a").expect("a opens").is_some());
    }

    #[test]
    fn wrong_key_is_refused() {
        let (dir, v, _) = vault();
        drop(v);
        let err = Vault::open(&redb(dir.path()), &MasterKey::generate()).expect_err("wrong key");
        assert!(matches!(err, VaultError::WrongKey { .. }), "{err}");
    }

    #[test]
    fn key_file_created_0600_and_loose_permissions_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let kf = dir.path().join("sub").join(KEY_FILE);
        let (k1, src) = MasterKey::load(&kf).expect("created");
        assert_eq!(src, KeySource::File(kf.clone()));
        assert_eq!(
            fs::metadata(&kf).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let (k2, _) = MasterKey::load(&kf).expect("reloaded");
        assert_eq!(k1.0.as_ref(), k2.0.as_ref());
        fs::set_permissions(&kf, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            MasterKey::load(&kf),
            Err(VaultError::KeyPermissions { .. })
        ));
    }

    #[test]
    fn key_parsing() {
        let k = MasterKey::generate();
        assert_eq!(
            MasterKey::parse(&k.encode()).expect("b64").0.as_ref(),
            k.0.as_ref()
        );
        let hex: String = k.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            MasterKey::parse(&hex).expect("hex").0.as_ref(),
            k.0.as_ref()
        );
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse("not base64!").is_err());
    }

    #[test]
    fn rotation_reseals_everything_and_old_key_stops_working() {
        let dir = tempfile::tempdir().expect("tmp");
        let kf = dir.path().join(KEY_FILE);
        let (old, _) = MasterKey::load(&kf).expect("key");
        {
            let v = Vault::open(&redb(dir.path()), &old).expect("open");
            v.put(Table::Secrets, "s", b"one").expect("put");
            v.put(Table::ClientTokens, "c", b"two").expect("put");
        }
        let r = rotate(&redb(dir.path()), dir.path(), &kf).expect("rotate");
        assert_eq!(r.records, 3); // two records and the key check
        assert!(r.new_env_key.is_none());
        assert!(!next_key_path(&kf).exists());
        let (new, _) = MasterKey::load(&kf).expect("new key");
        assert_ne!(new.0.as_ref(), old.0.as_ref());
        let v = Vault::open(&redb(dir.path()), &new).expect("opens with new key");
        assert_eq!(
            v.get(Table::ClientTokens, "c")
                .expect("get")
                .expect("some")
                .as_slice(),
            b"two"
        );
        drop(v);
        assert!(matches!(
            Vault::open(&redb(dir.path()), &old),
            Err(VaultError::WrongKey { .. })
        ));
    }

    #[test]
    fn interrupted_rotation_is_completed_or_discarded() {
        let dir = tempfile::tempdir().expect("tmp");
        let kf = dir.path().join(KEY_FILE);
        let (old, _) = MasterKey::load(&kf).expect("key");
        // Interrupted after re-sealing: the .next key opens the vault and is installed.
        let new = MasterKey::generate();
        {
            let mut v = Vault::open(&redb(dir.path()), &old).expect("open");
            v.reseal_all(&new).expect("reseal");
        }
        write_key_file(&next_key_path(&kf), &new).expect("write next");
        recover_interrupted_rotation(&redb(dir.path()), &kf).expect("recover");
        let (loaded, _) = MasterKey::load(&kf).expect("load");
        assert_eq!(loaded.0.as_ref(), new.0.as_ref());
        // Interrupted before re-sealing: the stray .next key is discarded.
        write_key_file(&next_key_path(&kf), &MasterKey::generate()).expect("write next");
        recover_interrupted_rotation(&redb(dir.path()), &kf).expect("recover");
        assert!(!next_key_path(&kf).exists());
        assert_eq!(
            MasterKey::load(&kf).expect("load").0.0.as_ref(),
            new.0.as_ref()
        );
    }

    #[test]
    fn a_second_process_is_told_the_vault_is_in_use() {
        let (dir, _v, key) = vault();
        let err = Vault::open(&redb(dir.path()), &key).expect_err("locked");
        assert!(matches!(err, VaultError::Locked { .. }), "{err}");
    }
}
