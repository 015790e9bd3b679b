//! The store's connections: its own pool (from `[<profile>.databases.<name>]`), the connection
//! a batch leader keeps between batches, and what a sqlx error means for the caller.

use std::time::Duration;

use rocket::figment::Figment;
use rocket_db_pools::sqlx::pool::PoolConnection;
use rocket_db_pools::sqlx::postgres::{
    PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres,
};
use rocket_db_pools::sqlx::{self, ConnectOptions, Connection, Executor};

use super::{Db, PostgresStore};
use crate::error::{StoreError, StoreErrorKind};

/// How long a connection of the store's own pool may have been idle and still be handed out
/// without a round trip to check it (see [`PostgresStore::pool_from_figment`]).
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// Whether a sqlx error means the database cannot be reached (so 503, and worth retrying).
pub(super) fn classify(e: sqlx::Error) -> StoreError {
    StoreError::new(classify_kind(&e), "PostgreSQL").with_source(e)
}

/// What a sqlx error means for the caller.
fn classify_kind(e: &sqlx::Error) -> StoreErrorKind {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => StoreErrorKind::Unavailable,
        E::Database(db) => match db.code().as_deref() {
            // Class 08: connection exception; 57P0x: the server is shutting down or restarting;
            // 53300: too many connections; 28xxx: authentication failed (the database is there,
            // but not to this app, until someone fixes the credentials).
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("57P0")
                    || code == "53300"
                    || code.starts_with("28") =>
            {
                StoreErrorKind::Unavailable
            }
            // 40P01: deadlock detected.
            Some("40P01") => StoreErrorKind::Conflict,
            _ => StoreErrorKind::Other,
        },
        _ => StoreErrorKind::Other,
    }
}

/// An error of the first contact with the database, saying where it was (host and port, or
/// socket; database; user; never the password) and why it failed. sqlx's pool says only that it
/// timed out waiting for a connection: then one direct connection, bounded by the same
/// timeout (`wait`), finds the cause (refused, authentication failed, timed out).
pub(super) async fn unreachable(
    options: &PgConnectOptions,
    wait: Duration,
    e: sqlx::Error,
) -> StoreError {
    let place = match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    let context = format!("PostgreSQL at {place}, database `{database}`, user `{user}`");
    let error = match e {
        sqlx::Error::PoolTimedOut => {
            match rocket::tokio::time::timeout(wait, PgConnection::connect_with(options)).await {
                Ok(Err(cause)) => cause,
                Err(_) => {
                    let cause = format!("no answer within {:?}", wait);
                    return StoreError::new(StoreErrorKind::Unavailable, context)
                        .with_source(cause);
                }
                Ok(Ok(_)) => sqlx::Error::PoolTimedOut,
            }
        }
        e => e,
    };
    let kind = classify_kind(&error);
    StoreError::new(kind, context).with_source(error)
}

impl PostgresStore {
    /// A pool initialised from `[<profile>.databases.<name>]` of `figment`, with the keys and
    /// defaults of `rocket_db_pools` (`url`, `max_connections`, `connect_timeout`,
    /// `idle_timeout`, `min_connections`), tuned for the store's statements:
    ///
    /// - `plan_cache_mode = force_generic_plan` (PostgreSQL 12 and later): the store's
    ///   statements have one right plan whatever their arguments, and PostgreSQL would
    ///   otherwise plan small batches anew on every call (`docs/performance-notes.md`);
    /// - `random_page_cost = 1.1`, the value PostgreSQL's documentation suggests when the data
    ///   is in memory or on SSDs: every statement of the store finds sessions by key, and with
    ///   the default (4) PostgreSQL scans the whole sessions table in each batch while it
    ///   holds fewer than a few thousand rows;
    /// - only a connection idle for a second or more is checked with a round trip before it is
    ///   handed out (sqlx checks every one); a batch whose connection died meanwhile runs
    ///   again on a checked one;
    /// - statement logging off, as `rocket_db_pools` has it at the usual log levels.
    pub async fn pool_from_figment(figment: &Figment, name: &str) -> Result<PgPool, StoreError> {
        let config = crate::store::database_config(figment, name)?;
        let options = config
            .url
            .parse::<PgConnectOptions>()
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Other, format!("databases.{name}.url"))
                    .with_source(e)
            })?
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
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
                    // One round trip. Not start-up `options`: PgBouncer refuses start-up
                    // parameters it was not told to ignore, and would refuse the connection.
                    let settings = if conn.server_version_num().unwrap_or(0) >= 120000 {
                        "SET plan_cache_mode = force_generic_plan; SET random_page_cost = 1.1"
                    } else {
                        "SET random_page_cost = 1.1"
                    };
                    conn.execute(settings).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await;
        match pool {
            Ok(pool) => Ok(pool),
            Err(e) => {
                let wait = Duration::from_secs(config.connect_timeout);
                Err(unreachable(&options, wait, e).await)
            }
        }
    }
}

/// The connection a batch leader keeps while batches keep coming, and for a moment after
/// (see [`Db::may_keep`]): sqlx checks a connection with a round trip as the pool hands it out
/// and as it is given back, so that is paid once per run of batches instead of once per
/// batch.
pub(super) type Kept = Option<PoolConnection<Postgres>>;

/// Whether a failure means the connection was broken (the server restarted, or closed it), so
/// a read is worth running again on a fresh one.
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
    /// The kept connection, acquired if none is kept. With `check` (a batch running again
    /// after its connection broke), an acquired connection answers a round trip first: what
    /// broke one connection (a restart, connections cut by the server) may have broken those
    /// idle in the pool too, which the pool hands out unchecked for a second (see
    /// [`TRUSTED_IDLE`]). One that fails the check is closed and another taken, at most as
    /// many times as the pool holds connections.
    pub(super) async fn kept_connection<'h>(
        &self,
        kept: &'h mut Kept,
        check: bool,
    ) -> Result<&'h mut PgConnection, StoreError> {
        if let Some(conn) = kept {
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
        Ok(kept.insert(conn))
    }

    /// Whether a batch leader may keep its connection into its next batch, or while it waits
    /// for more work: when it has one, and the pool can still hand out another at once (an
    /// idle one, or room for a new one), so that the app and the store's other calls never
    /// wait for it. A kept connection skips the round trips sqlx spends checking a connection
    /// when it is handed out and when it is given back.
    pub(super) fn may_keep(&self, kept: &Kept) -> bool {
        kept.is_some()
            && (self.pool.num_idle() > 0
                || self.pool.size() < self.pool.options().get_max_connections())
    }
}

/// A statement failed with `e`: the error, its connection no longer kept if it broke.
pub(super) fn failed(kept: &mut Kept, e: sqlx::Error) -> StoreError {
    if broken(&e) {
        *kept = None;
    }
    classify(e)
}

/// After attempt `attempt` (from 0) of a read failed with `e`: `Ok` to run it again on a fresh
/// connection (once, when the connection was broken), or the error.
///
/// Only reads run again. A write whose connection broke may have committed before its answer
/// was lost; running it again could overwrite what another instance wrote to the same keys in
/// between, so its caller learns that it failed (503) instead.
pub(super) fn after_failed_read(
    kept: &mut Kept,
    attempt: u32,
    e: sqlx::Error,
) -> Result<(), StoreError> {
    match attempt == 0 && broken(&e) {
        true => {
            *kept = None;
            Ok(())
        }
        false => Err(failed(kept, e)),
    }
}
