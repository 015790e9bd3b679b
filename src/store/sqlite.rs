//! The SQLite store, on a `rocket_db_pools` sqlx pool: one file shared by the processes of one
//! machine, with no server to run.
//!
//! Sessions live in `rocket_sessions` (one row each, filed under the SHA-256 of the id) and their
//! data in `rocket_session_data` (one row per key), as `migrations/sqlite/` creates them. A
//! session's data rows go with it through `ON DELETE CASCADE`, so deleting sessions is one
//! statement.
//!
//! Writes are committed in groups: concurrent creates, updates, cycles and destructions queue,
//! and one task at a time applies all that is queued in one transaction, so that one commit (one
//! `fsync` with `synchronous = FULL`) serves them all, and no two of this process's writes
//! wait for each other in SQLite's busy handler. Each call is answered once its transaction has
//! committed. A transaction's first statement writes, so it waits for another process's write
//! (up to the busy timeout) instead of failing. Concurrent loads are coalesced the same way,
//! into one query each.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocket::figment::Figment;
use rocket_db_pools::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use rocket_db_pools::sqlx::{self, ConnectOptions, Executor, Sqlite, Transaction};

use super::coalesce::{answer_each, take_front, Answer, Batch, Coalescer};
use super::sql::{literal, secs, unsigned, WhereStatements};
use super::{ChangeSet, SessionRecord, SessionStore, SessionSummary};
use crate::config::{SqliteStoreConfig, Synchronous};
use crate::error::{StoreError, StoreErrorKind};
use crate::id::StoreKey;

/// The schema, as `(version, description, SQL)`, in the order it is applied.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    20261206000002,
    "rocket_sessions",
    include_str!("../../migrations/sqlite/20261206000002_rocket_sessions.sql"),
)];

/// The sessions filed under the keys `?1` (32-byte keys, one after another) that are live at
/// `?2`, with their data: one row per key of each, or one row of NULLs for a session without
/// data.
const LOAD_MANY: &str = "WITH RECURSIVE k(i) AS (
                             SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < length(?1) / 32
                         )
                         SELECT s.key, s.created_at, s.expires_at, d.name, d.value
                           FROM k
                           JOIN rocket_sessions s ON s.key = substr(?1, k.i * 32 + 1, 32)
                           LEFT JOIN rocket_session_data d ON d.session_id = s.id
                          WHERE s.expires_at > ?2";

const SET: &str = "INSERT INTO rocket_session_data (session_id, name, value) VALUES (?1, ?2, ?3)
                   ON CONFLICT (session_id, name) DO UPDATE SET value = excluded.value";

const REMOVE: &str = "DELETE FROM rocket_session_data WHERE session_id = ?1 AND name = ?2";

/// Deletes the sessions whose key `?1` holds the value `?2`.
const DESTROY_WHERE: &str = "DELETE FROM rocket_sessions WHERE id IN (
                                SELECT d.session_id FROM rocket_session_data d
                                 WHERE d.name = ?1 AND d.value = ?2)";

/// The live sessions (at `?3`) whose key `?1` holds the value `?2`, with their times.
const LIST_WHERE: &str = "SELECT s.key, s.created_at, s.active_at, s.expires_at
                            FROM rocket_session_data d
                            JOIN rocket_sessions s ON s.id = d.session_id
                           WHERE d.name = ?1 AND d.value = ?2 AND s.expires_at > ?3";

/// Sessions in one SQLite file (the `sqlite` feature).
///
/// Built by the fairing from `store = { kind = "sqlite", ... }` (see [`SqliteStoreConfig`]), on
/// a pool it opens from `[<profile>.databases.<database>]` (see
/// [`pool_from_figment`](Self::pool_from_figment)) or on the app's own pool (see
/// [`Sessions::with_database`](crate::Sessions::with_database)).
pub struct SqliteStore {
    pool: SqlitePool,
    loads: Arc<Coalescer<PendingLoad, Files>>,
    writes: Arc<Coalescer<PendingWrite, Files>>,
    commits: Arc<AtomicU64>,
    ttl: u64,
    sweep_batch: u32,
    indexed: WhereStatements,
}

/// What a sqlx error means for the caller.
fn classify(e: sqlx::Error) -> StoreError {
    StoreError::new(classify_kind(&e), "SQLite").with_source(e)
}

fn classify_kind(e: &sqlx::Error) -> StoreErrorKind {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            StoreErrorKind::Unavailable
        }
        // SQLite's primary result code is the low byte of the extended one.
        E::Database(db) => match db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff)
        {
            // SQLITE_BUSY, SQLITE_LOCKED: another process's write outlasted the busy timeout.
            Some(5 | 6) => StoreErrorKind::Unavailable,
            // SQLITE_CORRUPT, SQLITE_NOTADB.
            Some(11 | 26) => StoreErrorKind::Corrupt,
            // SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_READONLY.
            Some(10 | 13 | 14 | 8) => StoreErrorKind::Io,
            _ => StoreErrorKind::Other,
        },
        E::ColumnDecode { .. } | E::Decode(_) => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Other,
    }
}

impl SqliteStore {
    /// A pool opened from `[<profile>.databases.<name>]` of `figment`, with the keys and
    /// defaults of `rocket_db_pools` (`url`, `max_connections`, `connect_timeout`,
    /// `idle_timeout`, `min_connections`), set up for the store: the file created when missing,
    /// the WAL journal (readers never wait for the writer, and several processes share the
    /// file), `config.synchronous`, a busy timeout of `config.busy_timeout` seconds, foreign
    /// keys on, statement logging off.
    pub async fn pool_from_figment(
        figment: &Figment,
        config: &SqliteStoreConfig,
    ) -> Result<SqlitePool, StoreError> {
        let name = &config.database;
        let db = super::database_config(figment, name)?;
        let options = SqliteConnectOptions::from_str(&db.url)
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Other, format!("databases.{name}.url"))
                    .with_source(e)
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match config.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(config.busy_timeout))
            .foreign_keys(true)
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new()
            .max_connections(db.max_connections as u32)
            .acquire_timeout(Duration::from_secs(db.connect_timeout))
            .idle_timeout(db.idle_timeout.map(Duration::from_secs))
            .min_connections(db.min_connections.unwrap_or_default())
            .connect_with(options)
            .await
            .map_err(|e| {
                let context = format!("opening databases.{name} ({})", db.url);
                StoreError::new(classify_kind(&e), context).with_source(e)
            })?;
        Ok(pool)
    }

    /// A store on `pool`, applying the schema first when `config.migrate` is set (and checking
    /// that the file answers either way). The pool's connections must have foreign keys on
    /// (sqlx's default): a launch on a pool without them is refused.
    pub async fn new(
        pool: SqlitePool,
        config: &SqliteStoreConfig,
    ) -> Result<SqliteStore, StoreError> {
        let mut conn = pool.acquire().await.map_err(classify)?;
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .map_err(classify)?;
        if foreign_keys != 1 {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                "the SQLite pool's connections have foreign keys off (PRAGMA foreign_keys): \
                 the store deletes a session's data through them; turn them on",
            ));
        }
        drop(conn);
        let commits = Arc::new(AtomicU64::new(0));
        let store = SqliteStore {
            loads: Coalescer::new(Files(pool.clone(), commits.clone()), LOAD_LEADERS),
            writes: Coalescer::new(Files(pool.clone(), commits.clone()), 1),
            commits,
            pool,
            ttl: config.ttl,
            sweep_batch: config.sweep_batch,
            indexed: WhereStatements::new(
                &config.indexed_keys,
                DESTROY_WHERE,
                LIST_WHERE,
                "d.name = ?1",
            ),
        };
        if config.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// The pool this store runs on.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// How many transactions of creates, updates, cycles and destructions the store has
    /// committed: concurrent writes share one.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// SQLite's plan (`EXPLAIN QUERY PLAN`, its steps joined by `; `) of the statements with
    /// which [`list_where`](SessionStore::list_where) and
    /// [`destroy_where`](SessionStore::destroy_where) find sessions by `name`: for the tests of
    /// indexed keys.
    #[doc(hidden)]
    pub async fn plans_of_where(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut plans = Vec::new();
        for (sql, params) in [
            (self.indexed.list_where(name), 3),
            (self.indexed.destroy_where(name), 2),
        ] {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query_as(&explain).bind(name).bind(&b""[..]);
            if params == 3 {
                query = query.bind(0i64);
            }
            let rows: Vec<(i64, i64, i64, String)> =
                query.fetch_all(&self.pool).await.map_err(classify)?;
            plans.push(rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("; "));
        }
        Ok(plans)
    }

    /// Applies what `migrations/sqlite/` holds and is not yet applied, and creates the indexes of
    /// the indexed keys, in one transaction that holds the file's write lock from its start
    /// (`BEGIN IMMEDIATE`), so that processes starting together do it once.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        conn.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
        let applied = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS rocket_sessions_schema (
                    version     INTEGER PRIMARY KEY,
                    description TEXT    NOT NULL,
                    applied_at  INTEGER NOT NULL DEFAULT (unixepoch())
                )",
            )
            .await?;
            let applied: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM rocket_sessions_schema")
                    .fetch_all(&mut *conn)
                    .await?;
            for (version, description, sql) in MIGRATIONS {
                if applied.contains(version) {
                    continue;
                }
                conn.execute(*sql).await?;
                sqlx::query(
                    "INSERT INTO rocket_sessions_schema (version, description) VALUES (?1, ?2)",
                )
                .bind(version)
                .bind(description)
                .execute(&mut *conn)
                .await?;
            }
            for key in self.indexed.keys() {
                let index = format!(
                    "CREATE INDEX IF NOT EXISTS rocket_session_data_by_{} \
                     ON rocket_session_data (value) WHERE name = {}",
                    hex::encode(key),
                    literal(key)
                );
                conn.execute(index.as_str()).await?;
            }
            conn.execute("COMMIT").await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(e) = applied {
            let _ = conn.execute("ROLLBACK").await;
            return Err(classify(e));
        }
        Ok(())
    }
}

/// Loads in flight at once, each on a connection of its own (WAL: readers do not wait).
const LOAD_LEADERS: usize = 2;

/// The pool, as the runner of batches, and how many write transactions it has committed.
struct Files(SqlitePool, Arc<AtomicU64>);

/// A `load` waiting for its batch.
struct PendingLoad {
    key: StoreKey,
    now: u64,
    done: Answer<Option<SessionRecord>>,
}

/// A write waiting for its group's commit; answers whether it was made.
struct PendingWrite {
    write: Write,
    done: Answer<bool>,
}

enum Write {
    Create {
        key: StoreKey,
        created: u64,
        changes: ChangeSet,
        now: u64,
        expires: u64,
    },
    Update {
        key: StoreKey,
        changes: ChangeSet,
        now: u64,
        expires: u64,
    },
    Cycle {
        old: StoreKey,
        new: StoreKey,
        changes: ChangeSet,
        now: u64,
        expires: u64,
    },
    Destroy {
        key: StoreKey,
    },
}

impl Batch<PendingLoad> for Files {
    type Kept = ();

    fn take(&self, queue: &mut Vec<PendingLoad>) -> Vec<PendingLoad> {
        take_front(queue)
    }

    fn may_keep(&self, _: &()) -> bool {
        false
    }

    async fn run(&self, batch: Vec<PendingLoad>, _: &mut ()) {
        let found = self.load_many(&batch).await;
        answer_each(batch.into_iter().map(|p| p.done), found);
    }
}

impl Batch<PendingWrite> for Files {
    type Kept = ();

    fn take(&self, queue: &mut Vec<PendingWrite>) -> Vec<PendingWrite> {
        take_front(queue)
    }

    fn may_keep(&self, _: &()) -> bool {
        false
    }

    async fn run(&self, batch: Vec<PendingWrite>, _: &mut ()) {
        let made = self.write_many(&batch).await.map_err(classify);
        answer_each(batch.into_iter().map(|p| p.done), made);
    }
}

impl Files {
    /// What one query finds for each of the batch's sessions, in the batch's order: the
    /// record of a session live at the item's `now`, `None` for any other.
    async fn load_many(
        &self,
        batch: &[PendingLoad],
    ) -> Result<Vec<Option<SessionRecord>>, StoreError> {
        let keys: Vec<u8> = batch.iter().flat_map(|p| p.key.0).collect();
        let earliest = batch.iter().map(|p| p.now).min().unwrap_or(0);
        type Row = (Vec<u8>, i64, i64, Option<String>, Option<Vec<u8>>);
        let rows: Vec<Row> = sqlx::query_as(LOAD_MANY)
            .bind(keys)
            .bind(secs(earliest))
            .fetch_all(&self.0)
            .await
            .map_err(classify)?;
        let mut found: Vec<Option<SessionRecord>> = vec![None; batch.len()];
        for (key, created, expires, name, value) in rows {
            // A batch holds a handful of keys: a scan finds each row's faster than a map.
            for (slot, pending) in found.iter_mut().zip(batch) {
                if pending.key.0[..] != key[..] || unsigned(expires) <= pending.now {
                    continue;
                }
                let record = slot.get_or_insert_with(|| SessionRecord {
                    created: unsigned(created),
                    expires: unsigned(expires),
                    data: Vec::new(),
                });
                if let (Some(name), Some(value)) = (&name, &value) {
                    record.data.push((name.clone(), value.clone()));
                }
            }
        }
        Ok(found)
    }

    /// Applies the batch's writes in order in one transaction; whether each was made.
    async fn write_many(&self, batch: &[PendingWrite]) -> Result<Vec<bool>, sqlx::Error> {
        let mut tx = self.0.begin().await?;
        let mut made = Vec::with_capacity(batch.len());
        for pending in batch {
            made.push(write(&mut tx, &pending.write).await?);
        }
        tx.commit().await?;
        self.1.fetch_add(1, Ordering::Relaxed);
        Ok(made)
    }
}

/// One write within `tx` (whose first statement, this or an earlier write's, writes).
async fn write(tx: &mut Transaction<'static, Sqlite>, write: &Write) -> Result<bool, sqlx::Error> {
    let (id, changes) = match write {
        Write::Create {
            key,
            created,
            changes,
            now,
            expires,
        } => {
            // An expired session under the key gives way (its data with it).
            sqlx::query("DELETE FROM rocket_sessions WHERE key = ?1 AND expires_at <= ?2")
                .bind(&key.0[..])
                .bind(secs(*now))
                .execute(&mut **tx)
                .await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO rocket_sessions (key, created_at, active_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO NOTHING RETURNING id",
            )
            .bind(&key.0[..])
            .bind(secs(*created))
            .bind(secs(*now))
            .bind(secs(*expires))
            .fetch_optional(&mut **tx)
            .await?;
            (id, changes)
        }
        Write::Update {
            key,
            changes,
            now,
            expires,
        } => {
            let id: Option<i64> = sqlx::query_scalar(
                "UPDATE rocket_sessions SET active_at = ?2, expires_at = ?3
                  WHERE key = ?1 AND expires_at > ?2 RETURNING id",
            )
            .bind(&key.0[..])
            .bind(secs(*now))
            .bind(secs(*expires))
            .fetch_optional(&mut **tx)
            .await?;
            (id, changes)
        }
        Write::Cycle {
            old,
            new,
            changes,
            now,
            expires,
        } => {
            let id: Option<i64> = sqlx::query_scalar(
                "UPDATE rocket_sessions SET key = ?2, active_at = ?3, expires_at = ?4
                  WHERE key = ?1 AND expires_at > ?3
                    AND NOT EXISTS (SELECT 1 FROM rocket_sessions WHERE key = ?2)
                 RETURNING id",
            )
            .bind(&old.0[..])
            .bind(&new.0[..])
            .bind(secs(*now))
            .bind(secs(*expires))
            .fetch_optional(&mut **tx)
            .await?;
            (id, changes)
        }
        Write::Destroy { key } => {
            sqlx::query("DELETE FROM rocket_sessions WHERE key = ?1")
                .bind(&key.0[..])
                .execute(&mut **tx)
                .await?;
            return Ok(true);
        }
    };
    let Some(id) = id else {
        return Ok(false);
    };
    for (name, value) in changes.iter() {
        match value {
            Some(value) => {
                sqlx::query(SET)
                    .bind(id)
                    .bind(name)
                    .bind(value)
                    .execute(&mut **tx)
                    .await?
            }
            None => {
                sqlx::query(REMOVE)
                    .bind(id)
                    .bind(name)
                    .execute(&mut **tx)
                    .await?
            }
        };
    }
    Ok(true)
}

impl SqliteStore {
    /// Queues `write` for the next group commit; its answer once committed.
    async fn write(&self, write: Write) -> Result<bool, StoreError> {
        self.writes.call(|done| PendingWrite { write, done }).await
    }
}

#[rocket::async_trait]
impl SessionStore for SqliteStore {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        self.loads
            .call(|done| PendingLoad {
                key: *key,
                now,
                done,
            })
            .await
    }

    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(Write::Create {
            key: *key,
            created,
            changes: changes.clone(),
            now,
            expires: changes.expiry(now, self.ttl),
        })
        .await
    }

    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(Write::Update {
            key: *key,
            changes: changes.clone(),
            now,
            expires: changes.expiry(now, self.ttl),
        })
        .await
    }

    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(Write::Cycle {
            old: *old,
            new: *new,
            changes: changes.clone(),
            now,
            expires: changes.expiry(now, self.ttl),
        })
        .await
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.write(Write::Destroy { key: *key }).await.map(|_| ())
    }

    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        let sql = self.indexed.destroy_where(name);
        let done = sqlx::query(sql)
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let sql = self.indexed.list_where(name);
        let rows: Vec<(Vec<u8>, i64, i64, i64)> = sqlx::query_as(sql)
            .bind(name)
            .bind(value)
            .bind(secs(now))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.into_iter()
            .map(|(key, created, active, expires)| {
                let key = <[u8; 32]>::try_from(key.as_slice()).map_err(|_| {
                    StoreError::new(StoreErrorKind::Corrupt, "a session key is not 32 bytes")
                })?;
                Ok(SessionSummary {
                    key: StoreKey(key),
                    created: unsigned(created),
                    active: unsigned(active),
                    expires: unsigned(expires),
                })
            })
            .collect()
    }

    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        let mut swept = 0;
        loop {
            // In batches, so that no sweep holds the file's write lock for long.
            let done = sqlx::query(
                "DELETE FROM rocket_sessions WHERE id IN (
                    SELECT id FROM rocket_sessions WHERE expires_at <= ?1 LIMIT ?2)",
            )
            .bind(secs(now))
            .bind(i64::from(self.sweep_batch))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
            swept += done.rows_affected();
            if done.rows_affected() < u64::from(self.sweep_batch) {
                return Ok(swept);
            }
        }
    }
}
