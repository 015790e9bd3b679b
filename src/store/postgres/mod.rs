//! The PostgreSQL store, on a `rocket_db_pools` sqlx pool.
//!
//! Sessions live in `rocket_sessions` (one row each, filed under the SHA-256 of the id) and
//! their data in `rocket_session_data` (one row per key), as the schema in `migrations/`
//! creates them. Every store call is one SQL statement, so one round trip: data-modifying
//! common table expressions change the session row and its keys together. Each statement that
//! changes or deletes existing sessions also checks the cache claim (`fence!`), so that no
//! instance ever changes a session another instance may be serving from its cache.
//!
//! The files, in the order a store meets them: `pool.rs` (connections, and what an error
//! means), `schema.rs` (migrations at launch), `claim.rs` (instances alive, the cache claim
//! and the fence), `skew.rs` (expiry in the database's time), `listen.rs` (requests to let
//! go of the claim), `cache.rs` (the local cache), `batch.rs` (concurrent loads and updates
//! coalesced into one statement each), `index.rs` (indexed keys); this file holds the store
//! itself and its [`SessionStore`] methods.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocket::tokio::sync::{watch, Mutex as AsyncMutex, Notify};
use rocket_db_pools::sqlx;
use rocket_db_pools::sqlx::postgres::PgPool;

use super::sql::{secs, unsigned, WhereStatements};
use super::{ChangeSet, SessionRecord, SessionStore, SessionSummary};
use crate::config::PostgresStoreConfig;
use crate::error::{StoreError, StoreErrorKind};
use crate::id::StoreKey;

#[macro_use]
mod claim;
mod batch;
mod cache;
mod index;
mod listen;
mod pool;
mod schema;
mod skew;

use self::batch::{Coalescer, PendingLoad, PendingUpdate, LOAD_LEADERS, UPDATE_LEADERS};
pub use self::cache::CacheStats;
use self::cache::{Cache, Ticket};
use self::claim::{claim_ticks, ClaimState, CLOSE_WAIT};
use self::listen::listen;
use self::pool::classify;
use self::skew::Skew;

/// Sessions in PostgreSQL (koyo's `make-postgres-session-store`).
///
/// Built by the fairing from `store = { kind = "postgres", ... }` (see
/// [`PostgresStoreConfig`]), on a pool it initialises from `[<profile>.databases.<database>]`
/// or on the app's own pool (see [`Sessions::with_database`](crate::Sessions::with_database)).
///
/// Every instance on the database says four times a second that it is alive. One that keeps a
/// local cache (`cache = N`, see [`PostgresStoreConfig`]) serves from it only while it holds
/// the database's cache claim, which it may take only while no other instance is alive; every
/// statement that changes or deletes an existing session checks the claim, under a lock, and
/// waits while another instance holds it (see `migrations/`), asking it to let go
/// (`NOTIFY rocket_sessions`). Changes themselves are not announced: the claim alone keeps
/// every cache from serving what another instance changed.
pub struct PostgresStore {
    db: Db,
    ttl: u64,
    sweep_batch: u32,
    indexed: WhereStatements,
    loads: Arc<Coalescer<PendingLoad, Db>>,
    updates: Arc<Coalescer<PendingUpdate, Db>>,
    /// Stops the store's tasks (the listener, the claim's ticks) when it is dropped or closed.
    stop: watch::Sender<bool>,
    /// Makes the claim's task tick at once (another instance asked for the claim).
    tick_now: Arc<Notify>,
}

/// The pool and the statement count, shared by the store and its batch runners.
#[derive(Clone)]
struct Db {
    pool: PgPool,
    statements: Arc<AtomicU64>,
    /// Tags this store's announcements, so that its own cache skips them, and names this
    /// instance in the claim's tables.
    instance: u64,
    cache: Option<Arc<Cache>>,
    /// This instance's side of the claim; held through each tick, so ticks and `close` never
    /// overlap.
    claim: Arc<AsyncMutex<ClaimState>>,
    /// How far the database's clock is from this machine's, measured at each tick: expiry is
    /// judged in the database's time.
    skew: Arc<Skew>,
}

impl Db {
    fn count(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }
}

/// The keys and values a change set sets, and the keys it removes, as SQL arrays.
fn split(changes: &ChangeSet) -> (Vec<&str>, Vec<&[u8]>, Vec<&str>) {
    let (mut names, mut values, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in changes.iter() {
        match value {
            Some(v) => {
                names.push(key);
                values.push(v);
            }
            None => removed.push(key),
        }
    }
    (names, values, removed)
}

impl PostgresStore {
    /// A store on `pool`, applying the schema first when `config.migrate` is set (and checking
    /// that the database answers either way).
    ///
    /// With `config.cache` set, a task listens for the other instances' requests to let go of
    /// the claim on one connection of `pool` for as long as the store lives.
    pub async fn new(
        pool: PgPool,
        config: &PostgresStoreConfig,
    ) -> Result<PostgresStore, StoreError> {
        Self::with_wall_clock(pool, config, skew::wall_ms).await
    }

    /// [`new`](Self::new), with `wall` (milliseconds since the Unix epoch) in place of this
    /// machine's wall clock where the store measures how far the database's clock is from it:
    /// for tests of an instance whose clock runs ahead or behind.
    #[doc(hidden)]
    pub async fn with_wall_clock(
        pool: PgPool,
        config: &PostgresStoreConfig,
        wall: fn() -> u64,
    ) -> Result<PostgresStore, StoreError> {
        if config.cache > 0 && pool.options().get_max_connections() < 2 {
            // The listener would hold the only connection, and every store call would wait.
            return Err(StoreError::new(
                StoreErrorKind::Other,
                "store.cache needs a pool of at least 2 connections (one of them listens): \
                 raise the database's max_connections, or set store.cache = 0",
            ));
        }
        let mut tag = [0u8; 8];
        getrandom::getrandom(&mut tag).map_err(|e| {
            StoreError::new(StoreErrorKind::Other, "the OS random source").with_source(e)
        })?;
        let instance = u64::from_be_bytes(tag);
        let cache = (config.cache > 0).then(|| Arc::new(Cache::new(config.cache, instance)));
        let db = Db {
            pool,
            statements: Arc::new(AtomicU64::new(0)),
            instance,
            cache,
            claim: Arc::new(AsyncMutex::new(ClaimState::default())),
            skew: Arc::new(Skew::new(wall)),
        };
        let (stop, stopped) = watch::channel(false);
        let store = PostgresStore {
            loads: Coalescer::new(db.clone(), LOAD_LEADERS),
            updates: Coalescer::new(db.clone(), UPDATE_LEADERS),
            db,
            ttl: config.ttl,
            sweep_batch: config.sweep_batch,
            indexed: index::statements(&config.indexed_keys),
            stop,
            tick_now: Arc::new(Notify::new()),
        };
        // The first contact: an error says where the database was and why it failed.
        if let Err(e) = store.db.pool.acquire().await {
            let pool = &store.db.pool;
            let wait = pool.options().get_acquire_timeout();
            return Err(pool::unreachable(&pool.connect_options(), wait, e).await);
        }
        if config.migrate {
            store.migrate(config.unlogged).await?;
            index::create_indexes(&store.indexed, &store.db.pool, schema::MIGRATION_LOCK).await?;
        }
        // Alive (and, with a cache, holding the claim if no other instance is) before it
        // serves anything.
        store.db.tick(&mut *store.db.claim.lock().await).await?;
        if let Some(cache) = &store.db.cache {
            let listening = listen(
                store.db.pool.clone(),
                cache.clone(),
                store.tick_now.clone(),
                stopped.clone(),
            );
            rocket::tokio::spawn(listening);
        }
        let ticks = claim_ticks(store.db.clone(), store.tick_now.clone(), stopped);
        rocket::tokio::spawn(ticks);
        Ok(store)
    }

    /// A transaction in which to change sessions by hand (SQL of your own) while instances
    /// run, safe from every instance's cache: it has called `rocket_sessions_edit_by_hand()`
    /// (see `migrations/`), so until it ends no instance changes a session or takes the cache
    /// claim, the claim is given up, and the holder has stopped serving from its cache (this
    /// waits up to 1.5 s for that). Commit it soon: every change of every instance waits for
    /// it, and fails with 503 after 10 s.
    ///
    /// ```no_run
    /// # async fn f(manager: &rocket_server_sessions::SessionManager) -> Result<(), Box<dyn std::error::Error>> {
    /// use rocket_db_pools::sqlx;
    /// use rocket_server_sessions::store::PostgresStore;
    ///
    /// let store = manager.store_as::<PostgresStore>().expect("sessions in PostgreSQL");
    /// let mut tx = store.begin_edit_by_hand().await?;
    /// sqlx::query("DELETE FROM rocket_session_data WHERE name = 'cart'")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin_edit_by_hand(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.db.pool.begin().await.map_err(classify)?;
        sqlx::query("SELECT rocket_sessions_edit_by_hand()")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(tx)
    }

    /// What the local cache has done, or `None` when it is off.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.db.cache.as_ref().map(|c| c.stats())
    }

    /// The pool this store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// How many SQL statements the store has sent for the calls made to it: each is one round
    /// trip to the server. The claim's background statements (one a second) are not counted.
    pub fn statements(&self) -> u64 {
        self.db.statements.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.db.count();
    }

    fn cache(&self) -> Option<&Cache> {
        self.db.cache.as_deref()
    }

    /// A record as the store holds it (times in the database's time), in the caller's time.
    fn answer(&self, mut record: SessionRecord) -> SessionRecord {
        record.created = self.db.skew.caller_time(record.created);
        record.expires = self.db.skew.caller_time(record.expires);
        record
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[rocket::async_trait]
impl SessionStore for PostgresStore {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.db.skew.db_time(now);
        let mut ticket: Option<Ticket> = None;
        if let Some(cache) = self.cache() {
            if let Some(record) = cache.get(key, now) {
                return Ok(Some(self.answer(record)));
            }
            ticket = cache.ticket(key);
        }
        let found = self
            .loads
            .call(|done| PendingLoad {
                key: *key,
                now,
                done,
            })
            .await?;
        if let (Some(cache), Some(ticket), Some(record)) = (self.cache(), ticket, &found) {
            cache.fill(ticket, key, record);
        }
        Ok(found.map(|record| self.answer(record)))
    }

    fn load_now(
        &self,
        key: &StoreKey,
        now: u64,
    ) -> Option<Result<Option<SessionRecord>, StoreError>> {
        // A session the cache serves is answered at once; any other is loaded from the database.
        let now = self.db.skew.db_time(now);
        self.cache()?
            .hit(key, now)
            .map(|record| Ok(Some(self.answer(record))))
    }

    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (created, now) = (self.db.skew.db_time(created), self.db.skew.db_time(now));
        let (names, values, _) = split(changes);
        for _ in 0..2 {
            self.count();
            let made: i64 = sqlx::query_scalar(
                "WITH s AS (
                    INSERT INTO rocket_sessions (key, created_at, expires_at, active_at)
                    VALUES ($1, $2, $3, $6)
                    ON CONFLICT (key) DO NOTHING
                    RETURNING id
                 ), d AS (
                    INSERT INTO rocket_session_data (session_id, name, value)
                    SELECT s.id, u.name, u.value FROM s, unnest($4::text[], $5::bytea[]) AS u(name, value)
                 )
                 SELECT count(*) FROM s",
            )
            .bind(&key.0[..])
            .bind(secs(created))
            .bind(secs(changes.expiry(now, self.ttl)))
            .bind(&names)
            .bind(&values)
            .bind(secs(now))
            .fetch_one(&self.db.pool)
            .await
            .map_err(classify)?;
            if made == 1 {
                if let Some(cache) = self.cache() {
                    cache.record_created(key, created, changes.expiry(now, self.ttl), changes);
                }
                return Ok(true);
            }
            // The key is taken. Only an expired session may give it up.
            self.count();
            let freed =
                sqlx::query("DELETE FROM rocket_sessions WHERE key = $1 AND expires_at <= $2")
                    .bind(&key.0[..])
                    .bind(secs(now))
                    .execute(&self.db.pool)
                    .await
                    .map_err(classify)?;
            if freed.rows_affected() == 0 {
                return Ok(false);
            }
        }
        Ok(false)
    }

    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let now = self.db.skew.db_time(now);
        self.updates
            .call(|done| PendingUpdate {
                key: *key,
                changes: changes.clone(),
                now,
                expires: changes.expiry(now, self.ttl),
                done,
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
        let now = self.db.skew.db_time(now);
        let (names, values, removed) = split(changes);
        let statement = || {
            sqlx::query_as::<_, (i64, bool)>(concat!(
                "WITH ",
                fence!(8),
                ", s AS (
                UPDATE rocket_sessions SET key = $2, expires_at = $3, active_at = $4
                 WHERE key = $1 AND expires_at > $4
                   AND NOT EXISTS (SELECT 1 FROM rocket_sessions WHERE key = $2)
                   AND EXISTS (SELECT FROM fence)
                RETURNING id
             ), removed AS (
                DELETE FROM rocket_session_data d USING s
                 WHERE d.session_id = s.id AND d.name = ANY($5::text[])
             ), upserted AS (
                INSERT INTO rocket_session_data (session_id, name, value)
                SELECT s.id, u.name, u.value FROM s, unnest($6::text[], $7::bytea[]) AS u(name, value)
                ON CONFLICT (session_id, name) DO UPDATE SET value = excluded.value
             ) SELECT (SELECT count(*) FROM s), EXISTS (SELECT FROM fence)"
            ))
            .bind(&old.0[..])
            .bind(&new.0[..])
            .bind(secs(changes.expiry(now, self.ttl)))
            .bind(secs(now))
            .bind(&removed)
            .bind(&names)
            .bind(&values)
            .bind(self.db.instance as i64)
            .fetch_one(&self.db.pool)
        };
        let moved = self
            .db
            .through_the_fence(statement, |(_, through)| *through)
            .await?;
        if let Some(cache) = self.cache() {
            cache.drop_key(old);
            cache.drop_key(new);
        }
        match moved {
            Ok((n, _)) => Ok(n == 1),
            // The new id was taken between the check and the update.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        let statement = || {
            sqlx::query_scalar::<_, bool>(concat!(
                "WITH ",
                fence!(2),
                ", d AS (
                DELETE FROM rocket_sessions WHERE key = $1 AND EXISTS (SELECT FROM fence)
             ) SELECT EXISTS (SELECT FROM fence)"
            ))
            .bind(&key.0[..])
            .bind(self.db.instance as i64)
            .fetch_one(&self.db.pool)
        };
        let done = self
            .db
            .through_the_fence(statement, |through| *through)
            .await?;
        if let Some(cache) = self.cache() {
            cache.drop_key(key);
        }
        done.map_err(classify)?;
        Ok(())
    }

    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        let sql = self.indexed.destroy_where(name);
        let statement = || {
            sqlx::query_as::<_, (Vec<Vec<u8>>, bool)>(sql)
                .bind(name)
                .bind(value)
                .bind(self.db.instance as i64)
                .fetch_one(&self.db.pool)
        };
        let done = self
            .db
            .through_the_fence(statement, |(_, through)| *through)
            .await?;
        let (deleted, _) = done.map_err(|e| {
            if let Some(cache) = self.cache() {
                cache.clear(); // what was deleted is unknown
            }
            classify(e)
        })?;
        if let Some(cache) = self.cache() {
            for key in deleted.iter().filter_map(|k| k.as_slice().try_into().ok()) {
                cache.drop_key(&StoreKey(key));
            }
        }
        Ok(deleted.len() as u64)
    }

    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let now = self.db.skew.db_time(now);
        self.count();
        let rows: Vec<(Vec<u8>, i64, i64, i64)> = sqlx::query_as(self.indexed.list_where(name))
            .bind(name)
            .bind(value)
            .bind(secs(now))
            .fetch_all(&self.db.pool)
            .await
            .map_err(classify)?;
        rows.into_iter()
            .map(|(key, created, active, expires)| {
                let key = key.as_slice().try_into().map_err(|_| {
                    StoreError::new(
                        StoreErrorKind::Corrupt,
                        "a stored session key is not 32 bytes",
                    )
                })?;
                let at = |t: i64| self.db.skew.caller_time(unsigned(t));
                Ok(SessionSummary {
                    key: StoreKey(key),
                    created: at(created),
                    active: at(active),
                    expires: at(expires),
                })
            })
            .collect()
    }

    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        let now = self.db.skew.db_time(now);
        let mut total = 0;
        loop {
            self.count();
            // `= ANY(ARRAY(..))` rather than `IN (..)`: as a generic plan (see
            // `pool_from_figment`), `IN` joins the batch against a scan of the whole table.
            // Another instance's claim lets nothing through: that instance sweeps.
            let (deleted, through): (i64, bool) = sqlx::query_as(concat!(
                "WITH ",
                fence!(3),
                ", d AS (
                    DELETE FROM rocket_sessions WHERE id = ANY(ARRAY(
                        SELECT id FROM rocket_sessions
                         WHERE expires_at <= $1 AND EXISTS (SELECT FROM fence)
                         ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))
                    RETURNING 1
                 ) SELECT (SELECT count(*) FROM d), EXISTS (SELECT FROM fence)"
            ))
            .bind(secs(now))
            .bind(i64::from(self.sweep_batch))
            .bind(self.db.instance as i64)
            .fetch_one(&self.db.pool)
            .await
            .map_err(classify)?;
            if !through {
                return Ok(total);
            }
            if let Some(cache) = self.cache() {
                cache.drop_expired(now);
            }
            let deleted = deleted.max(0) as u64;
            total += deleted;
            if deleted < u64::from(self.sweep_batch) {
                return Ok(total);
            }
        }
    }

    async fn close(&self) -> Result<(), StoreError> {
        // No more serving from the cache from here, and no more ticks.
        if let Some(cache) = self.cache() {
            cache.unclaimed();
        }
        let _ = self.stop.send(true);
        // Giving the claim up only spares the next instance a wait; a database that does not
        // answer must not hold up the shutdown, and then the claim lapses by itself.
        let closing = async { self.db.close(&mut *self.db.claim.lock().await).await };
        rocket::tokio::time::timeout(CLOSE_WAIT, closing)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "giving up the cache claim timed out; it lapses by itself",
                ))
            })
    }
}
