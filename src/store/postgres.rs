//! The PostgreSQL store, on a `rocket_db_pools` sqlx pool.
//!
//! Sessions live in `rocket_sessions` (one row each, filed under the SHA-256 of the id) and
//! their data in `rocket_session_data` (one row per key), as the schema in `migrations/`
//! creates them. Every store call is one SQL statement, so one round trip: data-modifying
//! common table expressions change the session row and its keys together. Each statement that
//! changes or deletes existing sessions also checks the cache claim (`fence!`), so that no
//! instance ever changes a session another instance may be serving from its cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocket::tokio::sync::{oneshot, watch, Mutex as AsyncMutex, Notify};

use rocket::figment::providers::Serialized;
use rocket::figment::Figment;
use rocket_db_pools::sqlx::pool::PoolConnection;
use rocket_db_pools::sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, Postgres,
};
use rocket_db_pools::sqlx::{self, ConnectOptions, Connection, Executor, Row};

use super::cache::{self, Cache, CacheStats, Ticket, CHANNEL};
use super::coalesce::{Batch, Coalescer};
use super::{ChangeSet, SessionRecord, SessionStore};
use crate::config::PostgresStoreConfig;
use crate::error::StoreError;
use crate::id::StoreKey;

/// The schema, as `(version, description, SQL)`, in the order it is applied.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        20261125000000,
        "rocket_sessions",
        include_str!("../../migrations/20261125000000_rocket_sessions.sql"),
    ),
    (
        20261126000000,
        "rocket_sessions_claim",
        include_str!("../../migrations/20261126000000_rocket_sessions_claim.sql"),
    ),
];

/// How often every instance says it is alive, and one with a cache takes or renews the claim.
const TICK: Duration = Duration::from_secs(1);

/// How long a claim lasts in the database unless renewed, and how long an instance counts as
/// alive after it last said so (both formatted into the tick's SQL).
const LEASE: Duration = Duration::from_secs(5);

/// How much sooner than the database the holder counts its claim as lapsed: room for the
/// two clocks to drift apart while a lease runs.
const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// How long closing the store may take to give up the claim before leaving it to lapse.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long a change waits for another instance's claim to be given up or to lapse before it
/// fails as unavailable: the claim lapses within `LEASE` of its holder's last renewal.
const FENCE_WAIT: Duration = Duration::from_secs(10);

/// How long a connection of the store's own pool may have been idle and still be handed out
/// without a round trip to check it (see [`PostgresStore::pool_from_figment`]).
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// Serialises concurrent migrations across instances (any constant no other app uses).
const MIGRATION_LOCK: i64 = 0x726f_636b_6573_7373;

/// Sessions in PostgreSQL (koyo's `make-postgres-session-store`).
///
/// Built by the fairing from `store = { kind = "postgres", ... }` (see
/// [`PostgresStoreConfig`]), on a pool it initialises from `[<profile>.databases.<database>]`
/// or on the app's own pool (see [`Sessions::with_database`](crate::Sessions::with_database)).
///
/// Every instance on the database says every second that it is alive. One that keeps a local
/// cache (`cache = N`, see [`PostgresStoreConfig`]) serves from it only while it holds the
/// database's cache claim, which it may take only while no other instance is alive; every
/// statement that changes or deletes an existing session checks the claim, under a lock, and
/// waits while another instance holds it (see `migrations/`). Every change is also announced
/// to the other instances (`NOTIFY rocket_sessions`).
pub struct PostgresStore {
    db: Db,
    ttl: u64,
    sweep_batch: u32,
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
}

/// What an instance knows of the claim.
#[derive(Default)]
struct ClaimState {
    /// The claim's epoch while this instance holds it.
    epoch: Option<i64>,
    /// Set by `close`: no more ticks.
    closed: bool,
    /// The claim's own connection, outside the pool: a tick never waits for a pool that a
    /// busy app has emptied (the claim would lapse under load), and takes nothing from it.
    conn: Option<PgConnection>,
}

/// A live session as a load finds it: the record and its expiry.
type Found = Option<(SessionRecord, u64)>;

impl Db {
    fn count(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }
}

/// A `load` waiting for its batch.
struct PendingLoad {
    key: StoreKey,
    now: u64,
    done: oneshot::Sender<Result<Found, StoreError>>,
}

/// An `update` waiting for its batch.
struct PendingUpdate {
    key: StoreKey,
    changes: ChangeSet,
    now: u64,
    expires: u64,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// Batches in flight at once: loads do not conflict; updates of two batches could lock the
/// same sessions, so fewer of them.
const LOAD_LEADERS: usize = 1;
const UPDATE_LEADERS: usize = 1;
const MAX_BATCH: usize = 256;

/// Whether a sqlx error means the database cannot be reached (so 503, and worth retrying).
fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) => match db.code().as_deref() {
            // Class 08: connection exception; 57P0x: the server is shutting down or restarting;
            // 53300: too many connections.
            Some(code) if code.starts_with("08") || code.starts_with("57P0") || code == "53300" => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Other(e.to_string()),
        },
        _ => StoreError::Other(e.to_string()),
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

fn secs(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

impl PostgresStore {
    /// A store on `pool`, applying the schema first when `config.migrate` is set (and checking
    /// that the database answers either way).
    ///
    /// With `config.cache` set, a task listens for the other instances' announcements on one
    /// connection of `pool` for as long as the store lives.
    pub async fn new(
        pool: PgPool,
        config: &PostgresStoreConfig,
    ) -> Result<PostgresStore, StoreError> {
        if config.cache > 0 && pool.options().get_max_connections() < 2 {
            // The listener would hold the only connection, and every store call would wait.
            return Err(StoreError::Other(
                "store.cache needs a pool of at least 2 connections (one of them listens): \
                 raise the database's max_connections, or set store.cache = 0"
                    .into(),
            ));
        }
        let mut tag = [0u8; 8];
        getrandom::getrandom(&mut tag).map_err(|e| StoreError::Other(e.to_string()))?;
        let instance = u64::from_be_bytes(tag);
        let cache = (config.cache > 0).then(|| Arc::new(Cache::new(config.cache, instance)));
        let db = Db {
            pool,
            statements: Arc::new(AtomicU64::new(0)),
            instance,
            cache,
            claim: Arc::new(AsyncMutex::new(ClaimState::default())),
        };
        let (stop, stopped) = watch::channel(false);
        let store = PostgresStore {
            loads: Coalescer::new(db.clone(), LOAD_LEADERS),
            updates: Coalescer::new(db.clone(), UPDATE_LEADERS),
            db,
            ttl: config.ttl,
            sweep_batch: config.sweep_batch,
            stop,
            tick_now: Arc::new(Notify::new()),
        };
        if config.migrate {
            store.migrate(config.unlogged).await?;
        } else {
            store.db.pool.execute("SELECT 1").await.map_err(classify)?;
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

    /// What the local cache has done, or `None` when it is off.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.db.cache.as_ref().map(|c| c.stats())
    }

    /// A pool initialised from `[<profile>.databases.<name>]` of `figment`, with the keys and
    /// defaults of `rocket_db_pools` (`url`, `max_connections`, `connect_timeout`,
    /// `idle_timeout`, `min_connections`), whose connections plan each statement once.
    ///
    /// PostgreSQL re-plans a prepared statement on every call while it expects a plan made
    /// for the call's own arguments to be cheaper than a generic one; for the store's
    /// batched statements that is every batch of fewer than about ten sessions, so at low
    /// load every load and every flush, with the planning costing several times the
    /// execution. These connections run with `plan_cache_mode = force_generic_plan`
    /// (PostgreSQL 12 and later): the store's statements have one right plan whatever their
    /// arguments (sessions through the key's unique index, sweeps through the expiry index),
    /// so one generic plan serves every call.
    ///
    /// sqlx checks every pooled connection with a round trip before handing it out, which at
    /// low load was one round trip more for every load and every flush (batch leaders keep
    /// their connection only while work keeps coming). Here only a connection idle for a
    /// second or more is checked. One that died within the second fails its statement
    /// instead: a batch then runs again on another connection, checked first, and any other
    /// call answers an error, as it would had the database gone away during the statement.
    /// Statement logging is off, as `rocket_db_pools` has it at the usual log levels.
    pub async fn pool_from_figment(figment: &Figment, name: &str) -> Result<PgPool, StoreError> {
        let workers: usize = figment.extract_inner("workers").unwrap_or(2);
        let config: rocket_db_pools::Config = figment
            .focus(&format!("databases.{name}"))
            .join(Serialized::default("max_connections", workers * 4))
            .join(Serialized::default("connect_timeout", 5))
            .extract()
            .map_err(|e| StoreError::Other(format!("databases.{name}: {e}")))?;
        let options = config
            .url
            .parse::<PgConnectOptions>()
            .map_err(|e| StoreError::Other(format!("databases.{name}.url: {e}")))?
            .disable_statement_logging();
        PgPoolOptions::new()
            // A connection used a moment ago is handed out as it is; one idle for longer is
            // checked with a round trip first, as sqlx checks every one by default.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= TRUSTED_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .max_connections(config.max_connections as u32)
            .acquire_timeout(Duration::from_secs(config.connect_timeout))
            .idle_timeout(config.idle_timeout.map(Duration::from_secs))
            .min_connections(config.min_connections.unwrap_or_default())
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.server_version_num().unwrap_or(0) >= 120000 {
                        conn.execute("SET plan_cache_mode = force_generic_plan")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(classify)
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

    /// Applies what `migrations/` holds and is not yet applied, under an advisory lock so that
    /// instances starting together do it once, and sets the tables' persistence.
    async fn migrate(&self, unlogged: bool) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await.map_err(classify)?;
        // "already exists, skipping" notices of a second start are noise in the app's log.
        tx.execute("SET LOCAL client_min_messages = warning")
            .await
            .map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS rocket_sessions_schema (
                version     bigint PRIMARY KEY,
                description text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(classify)?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM rocket_sessions_schema")
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        for (version, description, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.execute(*sql).await.map_err(|e| {
                StoreError::Other(format!("applying migration {version}_{description}: {e}"))
            })?;
            sqlx::query(
                "INSERT INTO rocket_sessions_schema (version, description) VALUES ($1, $2)",
            )
            .bind(version)
            .bind(description)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        // A table referenced by a logged table cannot be unlogged, and a logged table cannot
        // reference an unlogged one, hence the orders. The claim's tables follow the sessions':
        // a change locks the claim's row, which in a logged table writes to the WAL, and would
        // make every change of an unlogged store wait for a WAL flush.
        let tables: &[&str] = match unlogged {
            true => &[
                "rocket_session_data",
                "rocket_sessions",
                "rocket_sessions_claim",
                "rocket_sessions_instances",
            ],
            false => &[
                "rocket_sessions",
                "rocket_session_data",
                "rocket_sessions_claim",
                "rocket_sessions_instances",
            ],
        };
        for table in tables {
            let persistence: String = sqlx::query_scalar(
                "SELECT relpersistence::text FROM pg_class WHERE oid = $1::regclass",
            )
            .bind(table)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
            let sql = match (unlogged, persistence.as_str()) {
                (true, "p") => format!("ALTER TABLE {table} SET UNLOGGED"),
                (false, "u") => format!("ALTER TABLE {table} SET LOGGED"),
                _ => continue,
            };
            tx.execute(sql.as_str()).await.map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Keeps `cache` listening for announcements on a connection of `pool`, reconnecting when the
/// connection is lost, until `stop` changes or the pool is closed. The cache serves only
/// while the connection is up. Another instance asking for the claim makes the claim's task
/// tick at once (`tick_now`).
async fn listen(
    pool: PgPool,
    cache: Arc<Cache>,
    tick_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    use rocket::tokio::{select, time::sleep};

    let mut pause = Duration::from_millis(100);
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let failed = select! {
            _ = stop.changed() => return,
            connected = connect => match connected {
                Ok(mut listener) => {
                    cache.set_listening(true);
                    pause = Duration::from_millis(100);
                    let end = loop {
                        select! {
                            _ = stop.changed() => break None,
                            next = listener.try_recv() => match next {
                                Ok(Some(note)) if asks_for_claim(note.payload()) => {
                                    tick_now.notify_one()
                                }
                                Ok(Some(note)) => cache.announced(note.payload()),
                                Ok(None) => break Some("the connection was lost".to_string()),
                                Err(sqlx::Error::PoolClosed) => break None,
                                Err(e) => break Some(e.to_string()),
                            },
                        }
                    };
                    cache.set_listening(false);
                    match end {
                        None => return,
                        Some(reason) => reason,
                    }
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => e.to_string(),
            },
        };
        rocket::warn!("session store: the cache is off until it listens again: {failed}");
        select! {
            _ = stop.changed() => return,
            _ = sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Whether an announcement is another instance asking for the claim (see `Db::fenced`).
fn asks_for_claim(payload: &str) -> bool {
    payload.ends_with(" ?")
}

/// The claim's tick, in one statement: says `instance` is alive for [`LEASE`] more and, when it
/// `wants` the claim (it has a cache) and no other instance is alive, takes the claim for
/// [`LEASE`] or renews it. The epoch moves unless this instance held the claim without a break.
/// Answers how many other instances are alive, and the claim's epoch if this instance holds
/// it now. Taking or renewing the claim waits for every change in flight (each holds the
/// claim's row `FOR SHARE`), and the times are read after that wait. Sent as a simple query
/// (the values are numbers formatted in).
fn tick_sql(instance: i64, wants: bool) -> String {
    let lease = LEASE.as_secs();
    format!(
        "WITH claim_row AS (
            INSERT INTO rocket_sessions_claim (one) VALUES (true) ON CONFLICT (one) DO NOTHING
         ), alive AS (
            INSERT INTO rocket_sessions_instances (instance, alive_until)
            VALUES ({instance}, clock_timestamp() + interval '{lease} seconds')
            ON CONFLICT (instance) DO UPDATE SET alive_until = excluded.alive_until
         ), forgotten AS (
            DELETE FROM rocket_sessions_instances
             WHERE instance <> {instance} AND alive_until < clock_timestamp() - interval '1 day'
         ), others AS (
            SELECT count(*) AS n FROM rocket_sessions_instances
             WHERE instance <> {instance} AND alive_until > clock_timestamp()
         ), claimed AS (
            UPDATE rocket_sessions_claim c
               SET holder = {instance},
                   until = clock_timestamp() + interval '{lease} seconds',
                   epoch = CASE WHEN c.holder = {instance} AND c.until > clock_timestamp()
                                THEN c.epoch ELSE c.epoch + 1 END
             WHERE {wants} AND (SELECT n FROM others) = 0
               AND (c.holder IS NULL OR c.holder = {instance} OR c.until < clock_timestamp())
            RETURNING c.epoch
         ) SELECT (SELECT n FROM others), (SELECT epoch FROM claimed)"
    )
}

/// The check every statement that changes or deletes existing sessions makes, as its first
/// common table expression: `fence` has a row, locked until the statement's transaction ends,
/// when no other instance holds a valid claim (`$n` is this instance); the statement changes
/// nothing otherwise.
macro_rules! fence {
    ($n:literal) => {
        concat!(
            "fence AS (
                SELECT 1 FROM rocket_sessions_claim
                 WHERE holder IS NULL OR holder = $",
            $n,
            " OR until < clock_timestamp()
                   FOR SHARE
             )"
        )
    };
}

/// Ticks every [`TICK`] (or at once when another instance asks for the claim) until the store
/// is dropped or closed, then, if not closed, lets go of the claim.
async fn claim_ticks(db: Db, tick_now: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    use rocket::tokio::{select, time::sleep};

    let mut failing = false;
    loop {
        select! {
            _ = stop.changed() => break,
            _ = sleep(TICK) => {}
            _ = tick_now.notified() => {}
        }
        let mut claim = db.claim.lock().await;
        if claim.closed {
            return;
        }
        match db.tick(&mut claim).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                rocket::warn!("session store: cannot say this instance is alive: {e}");
            }
            Err(_) => {}
        }
    }
    let _ = db.close(&mut *db.claim.lock().await).await;
}

impl Db {
    /// One tick of the claim (see [`tick_sql`]): with a cache, serving starts on a newly taken
    /// claim with the cache emptied, goes on while the claim is renewed, and stops, before the
    /// claim is given up, when another instance is alive. A tick that fails changes nothing:
    /// the cache stops serving when its lease runs out.
    async fn tick(&self, claim: &mut ClaimState) -> Result<(), StoreError> {
        let started = Instant::now();
        let sql = tick_sql(self.instance as i64, self.cache.is_some());
        let row = self.claim_statement(claim, &sql).await?;
        let epoch: Option<i64> = row.try_get(1).map_err(classify)?;
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        match epoch {
            Some(epoch) => {
                // Counted from before the statement was sent, and shorter: the database's lease
                // began later and runs longer.
                let until = started + LEASE - LEASE_MARGIN;
                if claim.epoch == Some(epoch) {
                    cache.renewed(until);
                } else {
                    cache.claimed(until);
                    claim.epoch = Some(epoch);
                }
                Ok(())
            }
            None if claim.epoch.is_some() => self.give_up(claim, false).await,
            None => Ok(()),
        }
    }

    /// Runs `sql` on the claim's own connection, connecting it first if it is not connected;
    /// a connection that fails is dropped, and the next statement connects anew.
    async fn claim_statement(
        &self,
        claim: &mut ClaimState,
        sql: &str,
    ) -> Result<sqlx::postgres::PgRow, StoreError> {
        use rocket::tokio::time::timeout;

        let timed_out = || StoreError::Unavailable("the claim's statement timed out".into());
        let conn = match &mut claim.conn {
            Some(conn) => conn,
            None => {
                let options = self.pool.connect_options();
                let conn = timeout(LEASE, PgConnection::connect_with(&options))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(classify)?;
                claim.conn.insert(conn)
            }
        };
        // Bounded, so that a database that stopped answering never holds up a tick (or the
        // shutdown) for long; the connection is then dropped.
        let row = match timeout(LEASE, conn.fetch_one(sql)).await {
            Ok(row) => row.map_err(classify),
            Err(_) => Err(timed_out()),
        };
        if row.is_err() {
            claim.conn = None;
        }
        row
    }

    /// Stops serving from the cache, then gives up the claim, so that the others' changes need
    /// not wait for it to lapse; with `gone`, in the same statement, says this instance is gone.
    async fn give_up(&self, claim: &mut ClaimState, gone: bool) -> Result<(), StoreError> {
        if let Some(cache) = &self.cache {
            cache.unclaimed();
        }
        claim.epoch = None;
        let sql = format!(
            "WITH gone AS (
                DELETE FROM rocket_sessions_instances WHERE {gone} AND instance = {0}
             ), given_up AS (
                UPDATE rocket_sessions_claim SET holder = NULL, until = '-infinity'
                 WHERE holder = {0}
             ) SELECT 1",
            self.instance as i64
        );
        self.claim_statement(claim, &sql).await.map(|_| ())
    }

    /// Gives up the claim and says this instance is gone; no more ticks.
    async fn close(&self, claim: &mut ClaimState) -> Result<(), StoreError> {
        if claim.closed {
            return Ok(());
        }
        claim.closed = true;
        self.give_up(claim, true).await?;
        claim.conn = None;
        Ok(())
    }

    /// A change found another instance's claim in its way (`since`: when it first did). Asks
    /// the holder to look at once (it gives the claim up while another instance is alive, and
    /// this one is), then waits a moment; after [`FENCE_WAIT`], fails as unavailable.
    async fn fenced(&self, since: &mut Option<Instant>) -> Result<(), StoreError> {
        match since {
            None => {
                *since = Some(Instant::now());
                self.count();
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("{:016x} ?", self.instance))
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
            }
            Some(t) if t.elapsed() >= FENCE_WAIT => {
                return Err(StoreError::Unavailable(
                    "another instance holds the session cache claim and has not given it up".into(),
                ))
            }
            Some(_) => {}
        }
        rocket::tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }

    /// Runs a changing `statement` (counted) until the claim lets it through, as `through`
    /// reads its answer, waiting between tries as [`Db::fenced`] does. A failed statement is
    /// not tried again: its error is the answer.
    async fn through_the_fence<T, F, Fut>(
        &self,
        mut statement: F,
        through: impl Fn(&T) -> bool,
    ) -> Result<Result<T, sqlx::Error>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let mut since = None;
        loop {
            self.count();
            match statement().await {
                Ok(answer) if !through(&answer) => self.fenced(&mut since).await?,
                answer => return Ok(answer),
            }
        }
    }
}

fn lost() -> StoreError {
    StoreError::Other("the batch that carried this call was lost".into())
}

/// Up to `MAX_BATCH` items, each session at most once, sorted by session; the rest stay
/// queued, in order. A session's later items go back to the head of the queue, so its items
/// still run in the order they came. The queue keeps its memory, so that the items queued
/// while this batch runs need no allocation.
fn take_distinct<T>(queue: &mut Vec<T>, key: impl Fn(&T) -> StoreKey) -> Vec<T> {
    let mut batch: Vec<T> = queue.drain(..queue.len().min(MAX_BATCH)).collect();
    // Sessions in one order in every batch: batches that lock them do not deadlock. The sort
    // is stable: a session's items stay in the order they came.
    batch.sort_by_key(|item| key(item));
    if batch.windows(2).any(|w| key(&w[0]) == key(&w[1])) {
        let mut later = Vec::new();
        let mut distinct = Vec::with_capacity(batch.len());
        for item in batch {
            match distinct.last() {
                Some(last) if key(last) == key(&item) => later.push(item),
                _ => distinct.push(item),
            }
        }
        queue.splice(0..0, later);
        batch = distinct;
    }
    batch
}

/// The answer slot of the batch item at position `n`, counted from 1 as `WITH ORDINALITY`
/// counts; a position outside the batch is an error, never a panic.
fn at_position<T>(answers: &mut [T], n: i64) -> Result<&mut T, StoreError> {
    usize::try_from(n)
        .ok()
        .and_then(|n| answers.get_mut(n.wrapping_sub(1)))
        .ok_or_else(|| StoreError::Corrupt(format!("a row names batch position {n}")))
}

/// The connection a batch leader keeps while batches keep coming, and for a moment after
/// (see `Db::may_keep`): sqlx checks a connection with a round trip as the pool hands it out
/// and as it is given back, so that is paid once per run of batches instead of once per
/// batch.
type Held = Option<PoolConnection<Postgres>>;

/// Whether a failure means the connection was broken (the server restarted, or closed it), so
/// the batch is worth running again on a fresh one. Batches are idempotent: a load reads, an
/// update sets values and an expiry.
fn broken(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
        _ => false,
    }
}

impl Db {
    /// The held connection, acquired if none is held. With `check` (a batch running again
    /// after its connection broke), an acquired connection answers a round trip first: what
    /// broke one connection (a restart, connections cut by the server) may have broken those
    /// idle in the pool too, which the pool hands out unchecked for a second (see
    /// [`TRUSTED_IDLE`]). One that fails the check is closed and another taken, at most as
    /// many times as the pool holds connections.
    async fn held<'h>(
        &self,
        held: &'h mut Held,
        check: bool,
    ) -> Result<&'h mut PgConnection, StoreError> {
        if let Some(conn) = held {
            return Ok(conn);
        }
        let mut tries = self.pool.options().get_max_connections();
        let conn = loop {
            let mut conn = self.pool.acquire().await.map_err(classify)?;
            if !check {
                break conn;
            }
            match conn.ping().await {
                Ok(()) => break conn,
                Err(e) => {
                    // Closed, not given back: it is broken.
                    drop(conn.detach());
                    tries = tries.saturating_sub(1);
                    if tries == 0 {
                        return Err(classify(e));
                    }
                }
            }
        };
        Ok(held.insert(conn))
    }

    /// Whether a batch leader may keep its connection while it waits for more work: when it
    /// has one, and the pool can still hand out another at once (an idle one, or room for a
    /// new one), so that the app and the store's other calls never wait for it. A kept
    /// connection skips the round trips sqlx spends checking a connection when it is handed
    /// out and when it is given back.
    fn may_keep(&self, held: &Held) -> bool {
        held.is_some()
            && (self.pool.num_idle() > 0
                || self.pool.size() < self.pool.options().get_max_connections())
    }
}

/// After attempt `attempt` (from 0) of a statement failed with `e`: `Ok` to run it again on a
/// fresh connection (once, when the connection was broken), or the error. A broken connection
/// is never kept.
fn after_failure(held: &mut Held, attempt: u32, e: sqlx::Error) -> Result<(), StoreError> {
    if broken(&e) {
        *held = None;
        if attempt == 0 {
            return Ok(());
        }
    }
    Err(classify(e))
}

impl Batch<PendingLoad> for Db {
    type Held = Held;

    fn take(&self, queue: &mut Vec<PendingLoad>) -> Vec<PendingLoad> {
        take_distinct(queue, |p| p.key)
    }

    fn may_linger(&self, held: &Held) -> bool {
        self.may_keep(held)
    }

    async fn run(&self, batch: Vec<PendingLoad>, held: &mut Held) {
        match self.load_many(&batch, held).await {
            Ok(found) => {
                for (pending, found) in batch.into_iter().zip(found) {
                    let _ = pending.done.send(Ok(found));
                }
            }
            Err(e) => {
                for pending in batch {
                    let _ = pending.done.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Batch<PendingUpdate> for Db {
    type Held = Held;

    fn take(&self, queue: &mut Vec<PendingUpdate>) -> Vec<PendingUpdate> {
        take_distinct(queue, |p| p.key)
    }

    fn may_linger(&self, held: &Held) -> bool {
        self.may_keep(held)
    }

    async fn run(&self, batch: Vec<PendingUpdate>, held: &mut Held) {
        let mut result = self.update_many(&batch, held).await;
        // Should two batches deadlock anyway, PostgreSQL fails one of them: run it again.
        for _ in 0..3 {
            match &result {
                Err(StoreError::Other(m)) if m.contains("deadlock") => {
                    result = self.update_many(&batch, held).await
                }
                _ => break,
            }
        }
        for (i, pending) in batch.into_iter().enumerate() {
            let answer = match &result {
                Ok(live) => Ok(live[i]),
                Err(e) => Err(e.clone()),
            };
            // Before the answer, and before the next batch: the cache sees commits in order.
            if let Some(cache) = &self.cache {
                let live = matches!(answer, Ok(true));
                cache.updated(
                    &pending.key,
                    live.then_some((&pending.changes, pending.expires)),
                );
            }
            let _ = pending.done.send(answer);
        }
    }
}

/// The batched update: extends each live session, applies its per-key changes and announces
/// the sessions whose data changed ($9, or NULL), in one statement, unless another instance
/// holds the claim ($10 is this instance). Answers the positions in the batch of the sessions
/// that were live, and whether the claim let the statement through.
const UPDATE_MANY: &str = concat!(
    "WITH ",
    fence!(10),
    ", input AS (
        SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[])
          WITH ORDINALITY AS i(key, expires, now, n)
     ), s AS (
        UPDATE rocket_sessions t SET expires_at = i.expires
          FROM input i
         WHERE t.key = i.key AND t.expires_at > i.now AND EXISTS (SELECT FROM fence)
        RETURNING t.id, t.key, i.n
     ), removed AS (
        DELETE FROM rocket_session_data d
         USING s, unnest($4::bytea[], $5::text[]) AS r(key, name)
         WHERE r.key = s.key AND d.session_id = s.id AND d.name = r.name
     ), upserted AS (
        INSERT INTO rocket_session_data (session_id, name, value)
        SELECT s.id, u.name, u.value
          FROM s JOIN unnest($6::bytea[], $7::text[], $8::bytea[]) AS u(key, name, value)
            ON u.key = s.key
        ON CONFLICT (session_id, name) DO UPDATE SET value = excluded.value
     ), announced AS (
        SELECT pg_notify('rocket_sessions', $9) WHERE $9 IS NOT NULL AND EXISTS (SELECT FROM s)
     ) SELECT array(SELECT n FROM s), (SELECT count(*) FROM announced), EXISTS (SELECT FROM fence)"
);

impl Db {
    /// What one query finds for each of the batch's sessions, in the batch's order: the
    /// record and expiry of a live session, `None` for any other. Rows name their session by
    /// its position in the batch rather than by its key, and come in any order.
    async fn load_many(
        &self,
        batch: &[PendingLoad],
        held: &mut Held,
    ) -> Result<Vec<Found>, StoreError> {
        let keys: Vec<&[u8]> = batch.iter().map(|p| &p.key.0[..]).collect();
        let nows: Vec<i64> = batch.iter().map(|p| secs(p.now)).collect();
        let mut attempt = 0;
        let rows = loop {
            self.count();
            let conn = self.held(held, attempt > 0).await?;
            let rows = sqlx::query(
                "SELECT i.n, s.created_at, s.expires_at, d.name, d.value
               FROM unnest($1::bytea[], $2::bigint[]) WITH ORDINALITY AS i(key, now, n)
               JOIN rocket_sessions s ON s.key = i.key AND s.expires_at > i.now
               LEFT JOIN rocket_session_data d ON d.session_id = s.id",
            )
            .bind(&keys)
            .bind(&nows)
            .fetch_all(conn)
            .await;
            match rows {
                Ok(rows) => break rows,
                Err(e) => after_failure(held, attempt, e)?,
            }
            attempt += 1;
        };
        let mut found: Vec<Found> = vec![None; batch.len()];
        for row in &rows {
            let slot = at_position(&mut found, row.try_get(0).map_err(classify)?)?;
            let (record, _) = match slot {
                Some(live) => live,
                None => {
                    let created: i64 = row.try_get(1).map_err(classify)?;
                    let expires: i64 = row.try_get(2).map_err(classify)?;
                    let record = SessionRecord {
                        created: created.max(0) as u64,
                        data: Vec::new(),
                    };
                    slot.insert((record, expires.max(0) as u64))
                }
            };
            let name: Option<String> = row.try_get(3).map_err(classify)?;
            let value: Option<Vec<u8>> = row.try_get(4).map_err(classify)?;
            if let (Some(name), Some(value)) = (name, value) {
                record.data.push((name, value));
            }
        }
        Ok(found)
    }

    /// Extends each live session of the batch and applies its changes: one statement, so one
    /// transaction and one commit, which announces the sessions whose data changed. Returns,
    /// in the batch's order, whether each session was live.
    async fn update_many(
        &self,
        batch: &[PendingUpdate],
        held: &mut Held,
    ) -> Result<Vec<bool>, StoreError> {
        let (mut keys, mut expires, mut nows) = (Vec::new(), Vec::new(), Vec::new());
        let (mut removed_keys, mut removed_names) = (Vec::new(), Vec::new());
        let (mut set_keys, mut set_names, mut set_values) = (Vec::new(), Vec::new(), Vec::new());
        for p in batch {
            let key = &p.key.0[..];
            keys.push(key);
            expires.push(secs(p.expires));
            nows.push(secs(p.now));
            let (names, values, removed) = split(&p.changes);
            set_keys.extend(std::iter::repeat(key).take(names.len()));
            set_names.extend(names);
            set_values.extend(values);
            removed_keys.extend(std::iter::repeat(key).take(removed.len()));
            removed_names.extend(removed);
        }
        let changed: Vec<&StoreKey> = batch
            .iter()
            .filter(|p| !p.changes.is_empty())
            .map(|p| &p.key)
            .collect();
        // Only changed data is announced: another cache holding an older expiry reloads early.
        let announcement =
            (!changed.is_empty()).then(|| cache::announcement(self.instance, changed.into_iter()));
        let (mut attempt, mut fenced_since) = (0, None);
        let rows = loop {
            self.count();
            let conn = self.held(held, attempt > 0).await?;
            let done: Result<(Vec<i64>, i64, bool), _> = sqlx::query_as(UPDATE_MANY)
                .bind(&keys)
                .bind(&expires)
                .bind(&nows)
                .bind(&removed_keys)
                .bind(&removed_names)
                .bind(&set_keys)
                .bind(&set_names)
                .bind(&set_values)
                .bind(&announcement)
                .bind(self.instance as i64)
                .fetch_one(conn)
                .await;
            match done {
                Ok((rows, _, true)) => break rows,
                Ok((_, _, false)) => self.fenced(&mut fenced_since).await?,
                Err(e) => {
                    after_failure(held, attempt, e)?;
                    attempt += 1;
                }
            }
        };
        let mut live = vec![false; batch.len()];
        for n in rows {
            *at_position(&mut live, n)? = true;
        }
        Ok(live)
    }
}

#[rocket::async_trait]
impl SessionStore for PostgresStore {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        let mut ticket: Option<Ticket> = None;
        if let Some(cache) = self.cache() {
            if let Some(record) = cache.get(key, now) {
                return Ok(Some(record));
            }
            ticket = cache.ticket(key);
        }
        let (done, answer) = oneshot::channel();
        self.loads.submit(PendingLoad {
            key: *key,
            now,
            done,
        });
        let found = answer.await.map_err(|_| lost())??;
        if let (Some(cache), Some(ticket), Some((record, expires))) = (self.cache(), ticket, &found)
        {
            cache.fill(ticket, key, record, *expires);
        }
        Ok(found.map(|(record, _)| record))
    }

    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (names, values, _) = split(changes);
        for _ in 0..2 {
            self.count();
            let made: i64 = sqlx::query_scalar(
                "WITH s AS (
                    INSERT INTO rocket_sessions (key, created_at, expires_at)
                    VALUES ($1, $2, $3)
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
            .bind(secs(now.saturating_add(self.ttl)))
            .bind(&names)
            .bind(&values)
            .fetch_one(&self.db.pool)
            .await
            .map_err(classify)?;
            if made == 1 {
                if let Some(cache) = self.cache() {
                    cache.created(key, created, now.saturating_add(self.ttl), changes);
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
        let (done, answer) = oneshot::channel();
        self.updates.submit(PendingUpdate {
            key: *key,
            changes: changes.clone(),
            now,
            expires: now.saturating_add(self.ttl),
            done,
        });
        answer.await.map_err(|_| lost())?
    }

    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (names, values, removed) = split(changes);
        let announcement = cache::announcement(self.db.instance, [old, new].into_iter());
        let statement = || {
            sqlx::query_as::<_, (i64, i64, bool)>(concat!(
                "WITH ",
                fence!(9),
                ", s AS (
                UPDATE rocket_sessions SET key = $2, expires_at = $3
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
             ), announced AS (
                SELECT pg_notify('rocket_sessions', $8) WHERE EXISTS (SELECT FROM s)
             ) SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM announced),
                      EXISTS (SELECT FROM fence)"
            ))
            .bind(&old.0[..])
            .bind(&new.0[..])
            .bind(secs(now.saturating_add(self.ttl)))
            .bind(secs(now))
            .bind(&removed)
            .bind(&names)
            .bind(&values)
            .bind(&announcement)
            .bind(self.db.instance as i64)
            .fetch_one(&self.db.pool)
        };
        let moved = self
            .db
            .through_the_fence(statement, |(_, _, through)| *through)
            .await?;
        if let Some(cache) = self.cache() {
            cache.drop_key(old);
            cache.drop_key(new);
        }
        match moved {
            Ok((n, _, _)) => Ok(n == 1),
            // The new id was taken between the check and the update.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        let announcement = cache::announcement(self.db.instance, [key].into_iter());
        let statement = || {
            sqlx::query_as::<_, (bool, i64)>(concat!(
                "WITH ",
                fence!(3),
                ", d AS (
                DELETE FROM rocket_sessions WHERE key = $1 AND EXISTS (SELECT FROM fence)
                RETURNING 1
             ), announced AS (
                SELECT pg_notify('rocket_sessions', $2) WHERE EXISTS (SELECT FROM d)
             ) SELECT EXISTS (SELECT FROM fence), (SELECT count(*) FROM announced)"
            ))
            .bind(&key.0[..])
            .bind(&announcement)
            .bind(self.db.instance as i64)
            .fetch_one(&self.db.pool)
        };
        let done = self
            .db
            .through_the_fence(statement, |(through, _)| *through)
            .await?;
        if let Some(cache) = self.cache() {
            cache.drop_key(key);
        }
        done.map_err(classify)?;
        Ok(())
    }

    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        // Announces the deleted sessions by the first 8 bytes of their keys, as
        // `cache::announcement` does, or `*` when there are too many to name.
        let statement = || {
            sqlx::query_as::<_, (Vec<Vec<u8>>, i64, bool)>(concat!(
                "WITH ",
                fence!(5),
                ", d AS (
                DELETE FROM rocket_sessions s USING rocket_session_data d
                 WHERE d.session_id = s.id AND d.name = $1 AND d.value = $2
                   AND EXISTS (SELECT FROM fence)
                RETURNING s.key
             ), announced AS (
                SELECT pg_notify('rocket_sessions', CASE WHEN count(*) > $4 THEN $3 || ' *'
                    ELSE $3 || string_agg(' ' || encode(substring(key FROM 1 FOR 8), 'hex'), '') END)
                  FROM d HAVING count(*) > 0
             ) SELECT array(SELECT key FROM d), (SELECT count(*) FROM announced),
                      EXISTS (SELECT FROM fence)"
            ))
            .bind(name)
            .bind(value)
            .bind(format!("{:016x}", self.db.instance))
            .bind(cache::MAX_NAMED as i64)
            .bind(self.db.instance as i64)
            .fetch_one(&self.db.pool)
        };
        let done = self
            .db
            .through_the_fence(statement, |(_, _, through)| *through)
            .await?;
        let (deleted, _, _) = done.map_err(|e| {
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

    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            self.count();
            // `= ANY(ARRAY(..))` rather than `IN (..)`: as a generic plan (see
            // `pool_from_figment`), `IN` joins the batch against a scan of the whole table.
            // Another instance's claim lets nothing through: that instance sweeps.
            let (deleted, _, through): (i64, i64, bool) = sqlx::query_as(concat!(
                "WITH ",
                fence!(4),
                ", d AS (
                    DELETE FROM rocket_sessions WHERE id = ANY(ARRAY(
                        SELECT id FROM rocket_sessions
                         WHERE expires_at <= $1 AND EXISTS (SELECT FROM fence)
                         ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))
                    RETURNING 1
                 ), announced AS (
                    SELECT pg_notify('rocket_sessions', $3) WHERE EXISTS (SELECT FROM d)
                 ) SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM announced),
                          EXISTS (SELECT FROM fence)"
            ))
            .bind(secs(now))
            .bind(i64::from(self.sweep_batch))
            .bind(cache::announcement_swept(self.db.instance, now))
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
                Err(StoreError::Unavailable(
                    "giving up the cache claim timed out; it lapses by itself".into(),
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> StoreKey {
        StoreKey([i; 32])
    }

    #[test]
    fn a_batch_takes_each_session_once_and_its_later_items_run_next_in_order() {
        // Items (session, order of arrival): session 3 three times, session 1 twice.
        let mut queue = vec![(3, 0), (1, 1), (3, 2), (2, 3), (1, 4), (3, 5)];
        let taken = |queue: &mut Vec<(u8, u32)>| take_distinct(queue, |&(s, _)| key(s));
        assert_eq!(taken(&mut queue), [(1, 1), (2, 3), (3, 0)]);
        assert_eq!(taken(&mut queue), [(1, 4), (3, 2)]);
        queue.push((1, 6));
        assert_eq!(taken(&mut queue), [(1, 6), (3, 5)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_items_and_the_rest_keep_their_place() {
        let mut queue: Vec<(u8, u32)> = (0..MAX_BATCH as u32 + 3).map(|i| (i as u8, i)).collect();
        let batch = take_distinct(&mut queue, |&(s, _)| key(s));
        assert_eq!(batch.len(), MAX_BATCH);
        // 259 items over 256 sessions: the first 256 came in, the last three wait, in order.
        assert_eq!(queue, [(0, 256), (1, 257), (2, 258)]);
        let capacity = queue.capacity();
        let batch = take_distinct(&mut queue, |&(s, _)| key(s));
        assert_eq!(batch, [(0, 256), (1, 257), (2, 258)]);
        assert!(queue.is_empty());
        assert_eq!(queue.capacity(), capacity, "the queue keeps its memory");
    }

    #[test]
    fn a_row_naming_a_position_outside_its_batch_is_an_error_not_a_panic() {
        let mut answers = [false; 3];
        for n in [1, 3] {
            *at_position(&mut answers, n).unwrap() = true;
        }
        assert_eq!(answers, [true, false, true]);
        for n in [0, 4, -1, i64::MIN, i64::MAX] {
            assert!(matches!(
                at_position(&mut answers, n),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
