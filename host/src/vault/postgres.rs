//! The PostgreSQL backend, for several replicas sharing one vault.
//!
//! One table (`portcullis_records`, created by the versioned migrations in
//! `host/migrations/postgres/`, applied at open under sqlx's advisory lock so replicas
//! starting together migrate once). Values are sealed exactly as in redb, with the same
//! associated data, so a row copied to another key or table fails to open here too.
//!
//! Every write also notifies `portcullis_changes` inside its transaction (delivered on
//! commit), with this process's id, the table and the key; each replica listens and
//! passes what others changed to [`Store::changes`]. Locks across replicas are
//! transaction-scoped advisory locks, released when the transaction ends, including when
//! the process holding one dies.
//!
//! [`Store`] is synchronous (redb is). The pool lives on a small runtime of its own; a
//! call spawns its query there and waits on a channel. On a multi-threaded runtime the
//! waiting worker first hands its other tasks to another thread (`block_in_place`), so
//! a database round trip stalls one request, not the tasks queued behind it. That is
//! why, on PostgreSQL, the connection threads run tokio's multi-threaded runtime with
//! one worker each rather than a single-threaded one (`crate::threads`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use futures_util::future::BoxFuture;
use sha2::{Digest as _, Sha256};
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::store::{Change, DatabaseUrl, Held, Reseal, Store, Write};
use super::{Table, VaultError};

/// How long a query may wait for a pooled connection before the call fails (closed:
/// nothing is served from a vault that cannot answer).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Statements that run longer than this are cancelled by the server.
const STATEMENT_TIMEOUT: &str = "10s";
const MAX_CONNECTIONS: u32 = 8;
/// Locks held at once by this replica. Each holds a connection for as long as its work
/// takes (a token request), and that work needs another one to store its result: capped
/// below the pool's size (less the listener's), so the holders can always finish.
const MAX_HELD_LOCKS: usize = 3;
/// How long [`Store::lock`] waits for another replica to let go (a token refresh).
const LOCK_PATIENCE: Duration = Duration::from_secs(30);
/// The first pause between tries for a lock another replica holds; it doubles up to
/// [`LOCK_RETRY_MAX`]. Waiting holds neither a slot nor a connection, so locks on other
/// keys are taken meanwhile.
const LOCK_RETRY_FIRST: Duration = Duration::from_millis(10);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(250);
/// The notification channel of record changes.
const CHANNEL: &str = "portcullis_changes";
/// Changes buffered per subscriber; one that falls further behind resyncs.
const FEED_CAPACITY: usize = 1024;

/// The schema, versioned in the repository; a new version is a new file, never an edit.
fn migrator() -> Migrator {
    let mut m = Migrator::with_migrations(vec![Migration::new(
        1,
        "records".into(),
        MigrationType::Simple,
        include_str!("../../migrations/postgres/0001_records.sql").into_sql_str(),
        false,
    )]);
    m.dangerous_set_table_name("portcullis_migrations");
    m
}

pub struct PgStore {
    pool: PgPool,
    /// `Some` until dropped; shut down in the background so dropping the vault inside an
    /// async context does not panic.
    runtime: Option<Runtime>,
    url: DatabaseUrl,
    /// This process, in notifications, so it skips its own.
    instance: String,
    feed: broadcast::Sender<Change>,
    /// Permits for [`MAX_HELD_LOCKS`].
    lock_slots: Arc<tokio::sync::Semaphore>,
}

impl PgStore {
    /// Connects, applies pending migrations, and proves the database answers.
    pub fn open(url: &DatabaseUrl) -> Result<Self, VaultError> {
        // Parsed before the runtime exists: dropping a runtime inside another one's
        // task (an early return below it) panics.
        let options: PgConnectOptions = url.expose().parse().map_err(|e: sqlx::Error| {
            VaultError::Store(format!(
                "the database URL {url} is not usable: {}",
                safe(&e)
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-db")
            .enable_all()
            .build()
            .map_err(|e| VaultError::Store(format!("cannot start the database runtime: {e}")))?;
        let options = options
            .application_name("portcullis")
            .options([("statement_timeout", STATEMENT_TIMEOUT)]);
        // The pool's maintenance task runs on the store's runtime.
        let pool = {
            let _on = runtime.enter();
            PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options)
        };
        let this = Self {
            pool,
            runtime: Some(runtime),
            url: url.clone(),
            instance: crate::connections::random_token(),
            feed: broadcast::channel(FEED_CAPACITY).0,
            lock_slots: Arc::new(tokio::sync::Semaphore::new(MAX_HELD_LOCKS)),
        };
        let pool = this.pool.clone();
        this.run(async move {
            migrator()
                .run(&pool)
                .await
                .map_err(|e| sqlx::Error::Migrate(Box::new(e)))
        })?;
        // Listening before anything is read, so no change after the first read is missed.
        let (pool, feed, me) = (this.pool.clone(), this.feed.clone(), this.instance.clone());
        let listener = this.run(async move {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok(l)
        })?;
        if let Some(rt) = &this.runtime {
            rt.spawn(follow(listener, this.pool.clone(), feed, me));
        }
        Ok(this)
    }

    /// Runs `fut` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    ) -> Result<T, VaultError> {
        let Some(runtime) = &self.runtime else {
            return Err(VaultError::Store("the database store is closed".to_owned()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let wait = || rx.recv();
        let result = match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(VaultError::Store(format!(
                "the database {} failed: {}",
                self.url,
                safe(&e)
            ))),
            Err(_) => Err(VaultError::Store(
                "the database task stopped before answering".to_owned(),
            )),
        }
    }
}

/// Passes other processes' changes to subscribers until the store is dropped. When the
/// connection is lost, what changed meanwhile is unknown: once the database answers
/// again (on a new listener, listening already), subscribers are told to resync.
async fn follow(
    mut listener: PgListener,
    pool: PgPool,
    feed: broadcast::Sender<Change>,
    me: String,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                let mut parts = n.payload().splitn(3, '\n');
                let (Some(from), Some(tbl), Some(key)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if from == me {
                    continue;
                }
                if let Some(table) = Table::from_name(tbl) {
                    let _ = feed.send(Change::Record {
                        table,
                        key: key.to_owned(),
                    });
                }
            }
            lost => {
                if let Err(e) = lost {
                    tracing::warn!(error = %safe(&e), "the database's change feed failed");
                }
                tracing::warn!(
                    "the database's change feed was interrupted; waiting for the database"
                );
                // A new listener, listening before subscribers re-read, so a change made
                // after their re-read is heard (the old one would re-subscribe only at
                // its next receive, after the resync).
                listener = loop {
                    if let Ok(mut fresh) = PgListener::connect_with(&pool).await
                        && fresh.listen(CHANNEL).await.is_ok()
                    {
                        break fresh;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                };
                let _ = feed.send(Change::Resync);
                tracing::info!("the database answers again; cached records are re-read");
            }
        }
    }
}

/// The advisory lock id for a name: 64 bits of its SHA-256.
fn lock_id(name: &str) -> i64 {
    let d = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// One try for lock `id`: the transaction that holds it, or `None` when another session
/// does (the transaction is rolled back at once, giving its connection back).
async fn try_lock(
    pool: &PgPool,
    id: i64,
) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, sqlx::Error> {
    let mut t = pool.begin().await?;
    let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
        .bind(id)
        .fetch_one(&mut *t)
        .await?;
    if locked {
        return Ok(Some(t));
    }
    t.rollback().await?;
    Ok(None)
}

/// A held advisory lock: its transaction, rolled back on the store's runtime when
/// dropped (which releases the lock and returns the connection).
struct PgHeld {
    _slot: tokio::sync::OwnedSemaphorePermit,
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    runtime: Handle,
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.runtime.spawn(async move {
                let _ = tx.rollback().await;
            });
        }
    }
}

/// An error's text without anything the server echoed back from the query's parameters
/// (sealed bytes, keys): the database error's code and message only.
fn safe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => format!(
            "{} ({})",
            d.message(),
            d.code().as_deref().unwrap_or("no code")
        ),
        sqlx::Error::PoolTimedOut => format!(
            "no connection within {}s (is the server up and reachable?)",
            ACQUIRE_TIMEOUT.as_secs()
        ),
        other => other.to_string(),
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for PgStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, VaultError> {
        let (pool, key) = (self.pool.clone(), key.to_owned());
        self.run(async move {
            sqlx::query_scalar("SELECT value FROM portcullis_records WHERE tbl = $1 AND key = $2")
                .bind(table.name())
                .bind(key)
                .fetch_optional(&pool)
                .await
        })
    }

    fn keys(&self, table: Table) -> Result<Vec<String>, VaultError> {
        let pool = self.pool.clone();
        self.run(async move {
            sqlx::query_scalar("SELECT key FROM portcullis_records WHERE tbl = $1 ORDER BY key")
                .bind(table.name())
                .fetch_all(&pool)
                .await
        })
    }

    fn records(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
        let pool = self.pool.clone();
        self.run(async move {
            sqlx::query_as("SELECT key, value FROM portcullis_records WHERE tbl = $1 ORDER BY key")
                .bind(table.name())
                .fetch_all(&pool)
                .await
        })
    }

    fn write(&self, writes: Vec<Write>) -> Result<Vec<bool>, VaultError> {
        let (pool, me) = (self.pool.clone(), self.instance.clone());
        self.run(async move {
            let mut tx = pool.begin().await?;
            let mut existed = Vec::new();
            for w in writes {
                let (Write::Put(table, key, _) | Write::Delete(table, key)) = &w;
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("{me}\n{}\n{key}", table.name()))
                    .execute(&mut *tx)
                    .await?;
                match w {
                    Write::Put(table, key, value) => {
                        sqlx::query(
                            "INSERT INTO portcullis_records (tbl, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                        )
                        .bind(table.name())
                        .bind(key)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Write::Delete(table, key) => {
                        let done = sqlx::query(
                            "DELETE FROM portcullis_records WHERE tbl = $1 AND key = $2",
                        )
                        .bind(table.name())
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                        existed.push(done.rows_affected() > 0);
                    }
                }
            }
            tx.commit().await?;
            Ok(existed)
        })
    }

    fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, VaultError> {
        let (pool, key, value) = (self.pool.clone(), key.to_owned(), value.to_vec());
        self.run(async move {
            let done = sqlx::query(
                "INSERT INTO portcullis_records (tbl, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (tbl, key) DO NOTHING",
            )
            .bind(table.name())
            .bind(key)
            .bind(value)
            .execute(&pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn rewrite_all(&self, f: &mut Reseal<'_>) -> Result<usize, VaultError> {
        // One transaction across three hops to the store's runtime: lock and read every
        // row, compute the new values here (`f` is not `Send`), write them and commit.
        let pool = self.pool.clone();
        let (tx, rows) = self.run(async move {
            let mut tx = pool.begin().await?;
            let rows: Vec<(String, String, Vec<u8>)> =
                sqlx::query_as("SELECT tbl, key, value FROM portcullis_records FOR UPDATE")
                    .fetch_all(&mut *tx)
                    .await?;
            Ok((tx, rows))
        })?;
        let computed = rows
            .into_iter()
            .map(|(tbl, key, value)| {
                let table = Table::from_name(&tbl).ok_or_else(|| {
                    VaultError::Store(format!(
                        "the database holds records of an unknown table \"{tbl}\" (written by a newer Portcullis?); nothing was changed"
                    ))
                })?;
                let next = f(table, &key, &value)?;
                Ok((tbl, key, next))
            })
            .collect::<Result<Vec<_>, VaultError>>();
        match computed {
            Ok(new) => self.run(async move {
                let mut tx = tx;
                let n = new.len();
                for (tbl, key, value) in new {
                    sqlx::query(
                        "UPDATE portcullis_records SET value = $3 WHERE tbl = $1 AND key = $2",
                    )
                    .bind(tbl)
                    .bind(key)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(n)
            }),
            Err(e) => {
                // Rolled back on the store's runtime, which returns the connection.
                let _ = self.run(async move { tx.rollback().await });
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.feed.subscribe())
    }

    fn lock(&self, name: &str) -> Option<BoxFuture<'static, Result<Held, VaultError>>> {
        let runtime = self.runtime.as_ref()?.handle().clone();
        let (pool, id, url) = (self.pool.clone(), lock_id(name), self.url.clone());
        let slots = self.lock_slots.clone();
        Some(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
            let mut pause = LOCK_RETRY_FIRST;
            loop {
                let slot =
                    slots.clone().acquire_owned().await.map_err(|_| {
                        VaultError::Store("the database store is closed".to_owned())
                    })?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                // On the store's runtime: if the caller gives up, the transaction is
                // dropped there and rolls back.
                let pool = pool.clone();
                runtime.spawn(async move {
                    let _ = tx.send(try_lock(&pool, id).await);
                });
                match rx.await {
                    Ok(Ok(Some(t))) => {
                        return Ok(Held::new(PgHeld {
                            _slot: slot,
                            tx: Some(t),
                            runtime,
                        }));
                    }
                    // Another replica holds it: try again later, without holding this
                    // replica's slot or a connection meanwhile.
                    Ok(Ok(None)) => drop(slot),
                    Ok(Err(e)) => {
                        return Err(VaultError::Store(format!(
                            "the database {url} could not lock: {}",
                            safe(&e)
                        )));
                    }
                    Err(_) => {
                        return Err(VaultError::Store(
                            "the database task stopped before answering".to_owned(),
                        ));
                    }
                }
                if tokio::time::Instant::now() + pause > deadline {
                    return Err(VaultError::Store(format!(
                        "another replica has held a lock on the database {url} for over {} s",
                        LOCK_PATIENCE.as_secs()
                    )));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LOCK_RETRY_MAX);
            }
        }))
    }

    fn ping(&self) -> Result<(), VaultError> {
        let pool = self.pool.clone();
        self.run(async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop) })
    }
}
