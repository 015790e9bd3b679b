//! The cache claim: every instance says four times a second that it is alive; one with a
//! cache may take the one-row claim while no other instance is, and serves from its cache only
//! while it holds it. Every statement that changes existing sessions passes the fence first:
//! it changes nothing while another instance's claim is valid, and then asks that instance to
//! let go.

use std::time::{Duration, Instant};

use rocket::tokio::sync::{watch, Notify};
use rocket_db_pools::sqlx::postgres::PgConnection;
use rocket_db_pools::sqlx::{self, Connection, Executor, Row};
use std::sync::Arc;

use super::cache::CHANNEL;
use super::pool::classify;
use super::Db;
use crate::error::{StoreError, StoreErrorKind};

/// How often every instance says it is alive, and one with a cache takes or renews the claim.
pub(super) const TICK: Duration = Duration::from_millis(250);

/// How long a claim lasts in the database unless renewed, and how long an instance counts as
/// alive after it last said so (both formatted into the tick's SQL). It bounds how long the
/// others' changes wait when a holder vanishes without giving the claim up (a crash): the
/// cost of a short one is a tick statement every [`TICK`], a few per second per instance.
pub(super) const LEASE: Duration = Duration::from_millis(1500);

/// How much sooner than the database the holder counts its claim as lapsed: room for the
/// two clocks to drift apart while a lease runs.
pub(super) const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// How long a claim statement may take before its connection is dropped: a database that
/// stops answering never holds up a tick, or the shutdown, for long.
const STATEMENT_WAIT: Duration = Duration::from_secs(5);

/// The claim protocol this build speaks, recorded with each instance: 2, the advisory lock
/// fence (`migrations/*_rocket_sessions_fence.sql`); 1 is that of earlier builds, the claim
/// row's lock, which this build's changes also take while such an instance may run. No
/// instance claims while another is alive, whatever its protocol.
pub(super) const PROTOCOL: i32 = 2;

/// The advisory lock of the fence (`migrations/*_rocket_sessions_fence.sql`, which writes the
/// same number): changes hold it shared, taking or renewing the claim exclusively.
pub(super) const FENCE_LOCK: i64 = 0x726f_636b_6665_6e63;

/// How long closing the store may take to give up the claim before leaving it to lapse.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long a change waits for another instance's claim to be given up or to lapse before it
/// fails as unavailable: the claim lapses within `LEASE` of its holder's last renewal.
pub(super) const FENCE_WAIT: Duration = Duration::from_secs(10);

/// What an instance knows of the claim.
#[derive(Default)]
pub(super) struct ClaimState {
    /// The claim's epoch while this instance holds it.
    epoch: Option<i64>,
    /// Set by `close`: no more ticks.
    closed: bool,
    /// The claim's own connection, outside the pool: a tick never waits for a pool that a
    /// busy app has emptied (the claim would lapse under load), and takes nothing from it.
    conn: Option<PgConnection>,
}

/// The claim's tick, in one statement: says `instance` is alive for [`LEASE`] more and, when it
/// `wants` the claim (it has a cache) and no other instance is alive, takes the claim for
/// [`LEASE`] or renews it. The epoch moves unless this instance held the claim without a break.
/// Answers how many other instances are alive, the claim's epoch if this instance holds it
/// now, and the database's clock in milliseconds (see `skew.rs`). Taking or renewing the claim
/// waits for every change in flight (each holds [`FENCE_LOCK`] shared; the claim takes it
/// exclusively), and for earlier builds' changes too (they hold the claim's row `FOR SHARE`,
/// which the `UPDATE` waits for). Sent as a simple query (the values are numbers formatted in).
fn tick_sql(instance: i64, wants: bool) -> String {
    let lease = LEASE.as_millis();
    format!(
        "WITH claim_row AS (
            INSERT INTO rocket_sessions_claim (one) VALUES (true) ON CONFLICT (one) DO NOTHING
         ), alive AS (
            INSERT INTO rocket_sessions_instances (instance, alive_until, protocol)
            VALUES ({instance}, clock_timestamp() + interval '{lease} milliseconds', {PROTOCOL})
            ON CONFLICT (instance) DO UPDATE
               SET alive_until = excluded.alive_until, protocol = excluded.protocol
         ), forgotten AS (
            DELETE FROM rocket_sessions_instances
             WHERE instance <> {instance} AND alive_until < clock_timestamp() - interval '1 day'
         ), others AS (
            SELECT count(*) AS n FROM rocket_sessions_instances
             WHERE instance <> {instance} AND alive_until > clock_timestamp()
         ), claimed AS (
            UPDATE rocket_sessions_claim c
               SET holder = {instance},
                   until = clock_timestamp() + interval '{lease} milliseconds',
                   epoch = CASE WHEN c.holder = {instance} AND c.until > clock_timestamp()
                                THEN c.epoch ELSE c.epoch + 1 END
             WHERE (c.holder IS NULL OR c.holder = {instance} OR c.until < clock_timestamp())
               -- The lock only when it wants the claim and no other instance is alive (a CASE
               -- evaluates in order; the planner may reorder ANDs).
               AND CASE WHEN {wants} AND (SELECT n FROM others) = 0
                        THEN pg_advisory_xact_lock({FENCE_LOCK}) IS NOT NULL ELSE false END
            RETURNING c.epoch
         ) SELECT (SELECT n FROM others), (SELECT epoch FROM claimed),
                  extract(epoch FROM clock_timestamp())::float8 * 1000"
    )
}

/// The check every statement that changes or deletes existing sessions makes, as its first
/// common table expression: `fence` has a row when no other instance holds a valid claim (`$n`
/// is this instance), and the statement changes nothing otherwise. `rocket_sessions_fence`
/// holds [`FENCE_LOCK`] shared until the statement's transaction ends, so the claim cannot be
/// taken or renewed meanwhile; it writes nothing (see `migrations/`).
macro_rules! fence {
    ($n:literal) => {
        concat!("fence AS (SELECT 1 WHERE rocket_sessions_fence($", $n, "))")
    };
}

/// Ticks every [`TICK`] (or at once when another instance asks for the claim) until the store
/// is dropped or closed, then, if not closed, lets go of the claim.
pub(super) async fn claim_ticks(db: Db, tick_now: Arc<Notify>, mut stop: watch::Receiver<bool>) {
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
    pub(super) async fn tick(&self, claim: &mut ClaimState) -> Result<(), StoreError> {
        let started = Instant::now();
        let sql = tick_sql(self.instance as i64, self.cache.is_some());
        let before = self.skew.wall_ms();
        let row = self.claim_statement(claim, &sql).await?;
        let db_ms: f64 = row.try_get(2).map_err(classify)?;
        self.skew.measured(before, db_ms, self.skew.wall_ms());
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

        let timed_out = || {
            StoreError::new(
                StoreErrorKind::Unavailable,
                "the claim's statement timed out",
            )
        };
        let conn = match &mut claim.conn {
            Some(conn) => conn,
            None => {
                let options = self.pool.connect_options();
                let conn = timeout(STATEMENT_WAIT, PgConnection::connect_with(&options))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(classify)?;
                claim.conn.insert(conn)
            }
        };
        // Bounded, so that a database that stopped answering never holds up a tick (or the
        // shutdown) for long; the connection is then dropped.
        let row = match timeout(STATEMENT_WAIT, conn.fetch_one(sql)).await {
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
    pub(super) async fn close(&self, claim: &mut ClaimState) -> Result<(), StoreError> {
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
    /// this one is), then waits a moment; after [`FENCE_WAIT`], fails as unavailable. The
    /// request goes out on `held`, the connection the change already holds, if any: a change
    /// that waits for another from a small pool would wait out its acquire timeout.
    pub(super) async fn fenced(
        &self,
        since: &mut Option<Instant>,
        held: Option<&mut PgConnection>,
    ) -> Result<(), StoreError> {
        match since {
            None => {
                *since = Some(Instant::now());
                self.count();
                let ask = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("{:016x} ?", self.instance));
                match held {
                    Some(conn) => ask.execute(conn).await,
                    None => ask.execute(&self.pool).await,
                }
                .map_err(classify)?;
            }
            Some(t) if t.elapsed() >= FENCE_WAIT => {
                return Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "another instance holds the session cache claim and has not given it up",
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
    pub(super) async fn through_the_fence<T, F, Fut>(
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
                Ok(answer) if !through(&answer) => self.fenced(&mut since, None).await?,
                answer => return Ok(answer),
            }
        }
    }
}
