//! The `store` table of `[<profile>.session]`: which store runs, and its settings.

use std::path::PathBuf;

use serde::Deserialize;

use super::values::check_seconds;
use super::{MAX_SECONDS, WEEK};
use crate::error::ConfigError;

/// Which store runs, from the `store` table; `kind` picks the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `kind = "memory"`: the embedded default.
    Memory(MemoryStoreConfig),
    /// `kind = "postgres"`.
    Postgres(PostgresStoreConfig),
    /// `kind = "redis"`.
    Redis(RedisStoreConfig),
    /// `kind = "sqlite"`.
    Sqlite(SqliteStoreConfig),
}

impl StoreConfig {
    /// The store's idle lifetime of a session, in seconds.
    pub fn ttl(&self) -> u64 {
        match self {
            StoreConfig::Memory(m) => m.ttl,
            StoreConfig::Postgres(p) => p.ttl,
            StoreConfig::Redis(r) => r.ttl,
            StoreConfig::Sqlite(s) => s.ttl,
        }
    }
}

/// Settings of the Redis store (`store = { kind = "redis", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `database` | string | `"sessions"` | name under `[<profile>.databases]` of the pool to use (`url = "redis://..."`) |
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`); Redis deletes it then itself |
/// | `key_prefix` | string | `"rocket_sessions:"` | the start of every Redis key the store writes |
/// | `indexed_keys` | list of strings | `[]` | keys whose values are indexed (a sorted set per value), so that [`destroy_where`](crate::SessionManager::destroy_where) and [`list_where`](crate::SessionManager::list_where) on them read the index instead of scanning the keyspace |
///
/// A session is one hash, `<key_prefix>s:<hex digest of the id>`, whose Redis TTL is its
/// expiry: nothing is swept. Each load is one round trip (`HGETALL`) and each write one (a
/// script applying the change set atomically). Values of an indexed key are filed in
/// `<key_prefix>i:<key>:<SHA-1 of the value>`, kept by the same scripts. The scripts reach keys
/// they compute themselves, so the store runs on one Redis server (or a primary with replicas),
/// not on Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// Name of the database under `[<profile>.databases]`.
    pub database: String,
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// The start of every key the store writes.
    pub key_prefix: String,
    /// Keys whose values are indexed, for `destroy_where` and `list_where`.
    pub indexed_keys: Vec<String>,
}

/// How SQLite makes a commit durable (its `synchronous` setting, with the WAL journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// `FULL`: a commit is on disk before the response goes out.
    Full,
    /// `NORMAL`: a commit survives the app's crash; the machine's crash or power loss can take
    /// the last commits back (the file stays consistent).
    Normal,
}

/// Settings of the SQLite store (`store = { kind = "sqlite", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `database` | string | `"sessions"` | name under `[<profile>.databases]` of the pool to use (`url = "sqlite://path/to/file.db"`, created when missing) |
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`) |
/// | `migrate` | bool | `true` | apply the schema at ignite |
/// | `synchronous` | `"full"`, `"normal"` | `"full"` | durability of a commit (see [`Synchronous`]) |
/// | `busy_timeout` | seconds | 5 | how long a write waits for another process's write before the request answers 503 |
/// | `sweep_interval` | seconds | 60 | delete expired sessions this often |
/// | `sweep_batch` | rows | 1000 | at most this many sessions deleted per statement |
/// | `indexed_keys` | list of strings | `[]` | keys whose values are indexed (a partial index each), so that [`destroy_where`](crate::SessionManager::destroy_where) and [`list_where`](crate::SessionManager::list_where) on them are index lookups, not scans |
///
/// The store's own pool opens the file in WAL mode, so that several processes on one machine
/// share it: reads never wait, and writes take turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteStoreConfig {
    /// Name of the database under `[<profile>.databases]`.
    pub database: String,
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// Whether to apply the schema at ignite.
    pub migrate: bool,
    /// SQLite's `synchronous` setting on the store's own pool.
    pub synchronous: Synchronous,
    /// Seconds a write waits for the file's write lock.
    pub busy_timeout: u64,
    /// Seconds between sweeps of expired sessions.
    pub sweep_interval: u64,
    /// Most sessions deleted by one sweep statement.
    pub sweep_batch: u32,
    /// Keys whose values are indexed, for `destroy_where` and `list_where`.
    pub indexed_keys: Vec<String>,
}

/// Settings of the memory store (`store = { kind = "memory", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`) |
/// | `file_path` | path or `""` | `"sessions.snapshot"` | snapshot file (koyo `#:file-path`); `""` keeps nothing on disk |
/// | `snapshot_interval` | seconds | 30 | write the snapshot this often when something changed (0: only at shutdown) |
/// | `sweep_interval` | seconds | 60 | remove expired sessions this often |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// The snapshot file, if any.
    pub file_path: Option<PathBuf>,
    /// Seconds between periodic snapshots; 0 writes only at shutdown.
    pub snapshot_interval: u64,
    /// Seconds between sweeps of expired sessions.
    pub sweep_interval: u64,
}

/// Settings of the PostgreSQL store (`store = { kind = "postgres", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `database` | string | `"sessions"` | name under `[<profile>.databases]` of the pool to use |
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`) |
/// | `migrate` | bool | `true` | apply the schema at ignite |
/// | `unlogged` | bool | `false` | create the tables UNLOGGED (faster, emptied after a crash); a launch never changes existing tables, and refuses if theirs differs |
/// | `sweep_interval` | seconds | 60 | delete expired sessions this often |
/// | `sweep_batch` | rows | 1000 | at most this many sessions deleted per statement |
/// | `cache` | sessions | 0 (off) | keep up to this many sessions in this instance's memory, served only while no other instance uses the database (see below); `10000` suits one instance |
/// | `indexed_keys` | list of strings | `[]` | keys whose values are indexed (a partial hash index each, made at launch with `migrate`), so that [`destroy_where`](crate::SessionManager::destroy_where) and [`list_where`](crate::SessionManager::list_where) on them are index lookups, not scans |
///
/// The cache is off unless configured: it serves only while one instance uses the database,
/// and it becomes the default only once several instances are shown to lose nothing by it
/// (the README says what remains). With the cache on, a request whose session is cached makes
/// no round trip to load it, and what the cache serves is always what the database holds. Every instance on the database
/// says four times a second that it is alive (`rocket_sessions_instances`), and a caching
/// instance serves from its cache only while it holds the database's cache claim
/// (`rocket_sessions_claim`), which it may take only while no other instance is alive. Every
/// statement that changes or deletes an existing session, from any instance, checks the claim
/// (under an advisory lock that claiming waits for) and waits while another instance holds
/// it, asking it to let go (`NOTIFY rocket_sessions`). So a single instance serves from its
/// cache, and its own changes update it as they commit; when a second instance starts, its
/// first change makes the holder stop serving from its cache and give the claim up, and while
/// two or more run, none serves from a cache. The claim is a lease of 1.5 seconds renewed
/// every quarter second on a connection of its own; the holder stops serving half a second
/// before the lease could lapse by the database's clock (counting by the monotonic and the
/// wall clock, so a suspended machine resumes not serving), and gives the claim up at
/// shutdown. A holder that vanishes without giving it up delays other instances' changes until
/// its lease lapses (at most 1.5 seconds; after 10 seconds a change fails as unavailable). The
/// cache listens for requests to let go on one connection of the pool, and serves nothing
/// while that connection is down, so it needs a pool of at least 2 connections. To change
/// sessions by hand in SQL, see
/// [`PostgresStore::begin_edit_by_hand`](crate::store::PostgresStore::begin_edit_by_hand)
/// (`SELECT rocket_sessions_edit_by_hand()` first in the transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStoreConfig {
    /// Name of the database under `[<profile>.databases]`.
    pub database: String,
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// Whether to apply the schema at ignite.
    pub migrate: bool,
    /// Whether new tables are created UNLOGGED.
    pub unlogged: bool,
    /// Seconds between sweeps of expired sessions.
    pub sweep_interval: u64,
    /// Most sessions deleted by one sweep statement.
    pub sweep_batch: u32,
    /// Most sessions kept in this instance's memory; 0 turns the cache off.
    pub cache: usize,
    /// Keys whose values are indexed, for `destroy_where` and `list_where`.
    pub indexed_keys: Vec<String>,
}

/// A larger cache than this is a mistake (it would hold gigabytes).
const MAX_CACHE: usize = 10_000_000;
/// The PostgreSQL store's cache unless configured: none (see [`PostgresStoreConfig`]).
const DEFAULT_CACHE: usize = 0;
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    kind: Option<String>,
    ttl: Option<u64>,
    file_path: Option<PathBuf>,
    snapshot_interval: Option<u64>,
    sweep_interval: Option<u64>,
    database: Option<String>,
    migrate: Option<bool>,
    unlogged: Option<bool>,
    sweep_batch: Option<u32>,
    cache: Option<usize>,
    indexed_keys: Option<Vec<String>>,
    key_prefix: Option<String>,
    synchronous: Option<Synchronous>,
    busy_timeout: Option<u64>,
}

impl RawStore {
    pub(super) fn validate(
        self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<StoreConfig, ConfigError> {
        let ttl = self.ttl.unwrap_or(WEEK);
        check_seconds(ttl).map_err(|r| err("store.ttl", r))?;
        let sweep_interval = self.sweep_interval.unwrap_or(60);
        check_seconds(sweep_interval).map_err(|r| err("store.sweep_interval", r))?;
        let kind = self.kind.as_deref().unwrap_or("memory");
        let refuse = |key: &str, present: bool| match present {
            true => Err(err(
                &format!("store.{key}"),
                format!("not a setting of the `{kind}` store"),
            )),
            false => Ok(()),
        };
        match kind {
            "memory" => {
                refuse("database", self.database.is_some())?;
                refuse("migrate", self.migrate.is_some())?;
                refuse("unlogged", self.unlogged.is_some())?;
                refuse("sweep_batch", self.sweep_batch.is_some())?;
                refuse("cache", self.cache.is_some())?;
                refuse("indexed_keys", self.indexed_keys.is_some())?;
                refuse("key_prefix", self.key_prefix.is_some())?;
                refuse("synchronous", self.synchronous.is_some())?;
                refuse("busy_timeout", self.busy_timeout.is_some())?;
                let snapshot_interval = self.snapshot_interval.unwrap_or(30);
                if snapshot_interval > MAX_SECONDS {
                    return Err(err("store.snapshot_interval", "too large".into()));
                }
                let file_path = match self.file_path {
                    None => Some(PathBuf::from("sessions.snapshot")),
                    Some(p) if p.as_os_str().is_empty() => None,
                    Some(p) => Some(p),
                };
                Ok(StoreConfig::Memory(MemoryStoreConfig {
                    ttl,
                    file_path,
                    snapshot_interval,
                    sweep_interval,
                }))
            }
            "postgres" => {
                refuse("file_path", self.file_path.is_some())?;
                refuse("snapshot_interval", self.snapshot_interval.is_some())?;
                refuse("key_prefix", self.key_prefix.is_some())?;
                refuse("synchronous", self.synchronous.is_some())?;
                refuse("busy_timeout", self.busy_timeout.is_some())?;
                let database = database(self.database, &err)?;
                let sweep_batch = sweep_batch(self.sweep_batch, &err)?;
                let cache = self.cache.unwrap_or(DEFAULT_CACHE);
                if cache > MAX_CACHE {
                    return Err(err("store.cache", format!("at most {MAX_CACHE} sessions")));
                }
                let indexed_keys = indexed_keys(self.indexed_keys, &err)?;
                Ok(StoreConfig::Postgres(PostgresStoreConfig {
                    database,
                    ttl,
                    migrate: self.migrate.unwrap_or(true),
                    unlogged: self.unlogged.unwrap_or(false),
                    sweep_interval,
                    sweep_batch,
                    cache,
                    indexed_keys,
                }))
            }
            "redis" => {
                for (key, present) in [
                    ("file_path", self.file_path.is_some()),
                    ("snapshot_interval", self.snapshot_interval.is_some()),
                    ("migrate", self.migrate.is_some()),
                    ("unlogged", self.unlogged.is_some()),
                    ("sweep_interval", self.sweep_interval.is_some()),
                    ("sweep_batch", self.sweep_batch.is_some()),
                    ("cache", self.cache.is_some()),
                    ("synchronous", self.synchronous.is_some()),
                    ("busy_timeout", self.busy_timeout.is_some()),
                ] {
                    refuse(key, present)?;
                }
                let key_prefix = self.key_prefix.unwrap_or_else(|| "rocket_sessions:".into());
                if key_prefix.is_empty() {
                    return Err(err(
                        "store.key_prefix",
                        "must not be empty: the store's keys would mix with the app's".into(),
                    ));
                }
                Ok(StoreConfig::Redis(RedisStoreConfig {
                    database: database(self.database, &err)?,
                    ttl,
                    key_prefix,
                    indexed_keys: indexed_keys(self.indexed_keys, &err)?,
                }))
            }
            "sqlite" => {
                refuse("file_path", self.file_path.is_some())?;
                refuse("snapshot_interval", self.snapshot_interval.is_some())?;
                refuse("unlogged", self.unlogged.is_some())?;
                refuse("cache", self.cache.is_some())?;
                refuse("key_prefix", self.key_prefix.is_some())?;
                let busy_timeout = self.busy_timeout.unwrap_or(5);
                check_seconds(busy_timeout).map_err(|r| err("store.busy_timeout", r))?;
                Ok(StoreConfig::Sqlite(SqliteStoreConfig {
                    database: database(self.database, &err)?,
                    ttl,
                    migrate: self.migrate.unwrap_or(true),
                    synchronous: self.synchronous.unwrap_or(Synchronous::Full),
                    busy_timeout,
                    sweep_interval,
                    sweep_batch: sweep_batch(self.sweep_batch, &err)?,
                    indexed_keys: indexed_keys(self.indexed_keys, &err)?,
                }))
            }
            other => Err(err(
                "store.kind",
                format!(
                    "unknown store `{other}`: expected \"memory\", \"postgres\", \"redis\" or \
                     \"sqlite\""
                ),
            )),
        }
    }
}

/// The `database` of a store on a pool: `"sessions"` unless set, never empty.
fn database(
    database: Option<String>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<String, ConfigError> {
    let database = database.unwrap_or_else(|| "sessions".into());
    if database.is_empty() {
        return Err(err("store.database", "must not be empty".into()));
    }
    Ok(database)
}

/// The `sweep_batch` of a store that sweeps in statements: 1000 unless set, at least 1.
fn sweep_batch(
    batch: Option<u32>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<u32, ConfigError> {
    match batch.unwrap_or(1000) {
        0 => Err(err("store.sweep_batch", "must be at least 1".into())),
        batch => Ok(batch),
    }
}

/// The `indexed_keys` of a store: each non-empty text without NUL.
fn indexed_keys(
    keys: Option<Vec<String>>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<String>, ConfigError> {
    let keys = keys.unwrap_or_default();
    if keys.iter().any(|key| key.is_empty() || key.contains('\0')) {
        return Err(err(
            "store.indexed_keys",
            "a key must be non-empty text without NUL".into(),
        ));
    }
    Ok(keys)
}
